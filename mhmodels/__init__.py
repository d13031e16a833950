"""mhmodels: multi-hardware mobile models (Multi-AVG, Multi-MAX, MobileNet baselines).

    model = mhmodels.build('multi_max', width=1.0)
    backbone = mhmodels.build('multi_max', features_only=True)   # stride 4/8/16/32 maps
    mhmodels.profile('multi_avg').madds_m
    qat = mhmodels.quantize(model)                          # fake-quant twin (tf_keras)
    mhmodels.export_tflite(qat, 'multi_max.tflite', quantization='int8')

Importing the package is cheap: TensorFlow / Keras load on the first build. It checks (without
importing it) that some TensorFlow distribution is installed: mhmodels depends on none, so
that installing it never replaces the user's (see README, Install).
"""
import importlib.util as _importlib_util

NO_TENSORFLOW_MESSAGE = """mhmodels needs TensorFlow (2.16 or newer) and none is installed.
mhmodels depends on no TensorFlow distribution, so that installing it never replaces yours;
install it with the one for this machine:
    pip install "mhmodels[cpu]"     # tensorflow-cpu
    pip install "mhmodels[gpu]"     # tensorflow[and-cuda] (NVIDIA GPU, Linux)
    pip install "mhmodels[tpu]"     # tensorflow-tpu (Cloud TPU VM)
or install any TensorFlow distribution yourself (pip install tensorflow)."""

if _importlib_util.find_spec("tensorflow") is None:
    raise ImportError(NO_TENSORFLOW_MESSAGE)

from mhmodels.builder import build_model, with_grouped_conv
from mhmodels.export import ExportError, ExportResult, export_tflite, tflite_ops
from mhmodels.factory import build
from mhmodels.features import feature_extractor
from mhmodels.profile import Profile, profile
from mhmodels.qat import QuantizeError, calibrate, quantize, quantize_scope
from mhmodels.registry import get_entry, get_spec, list_models, register, unregister
from mhmodels.spec import LayerSpec, ModelSpec, SpecError
from mhmodels.weights import download_tflite
from mhmodels.preprocessing import decode_predictions, preprocess_input

__version__ = "0.1.0"

__all__ = [
    "build", "build_model", "feature_extractor", "with_grouped_conv", "get_entry", "get_spec",
    "list_models", "register", "unregister",
    "profile", "Profile", "LayerSpec", "ModelSpec", "SpecError", "download_tflite",
    "quantize", "calibrate", "quantize_scope", "QuantizeError",
    "export_tflite", "tflite_ops", "ExportResult", "ExportError",
    "preprocess_input", "decode_predictions",
]
