"""mhmodels: multi-hardware mobile models (Multi-AVG, Multi-MAX, MobileNet baselines).

    model = mhmodels.build('multi_max', width=1.0)
    mhmodels.profile('multi_avg').madds_m
    qat = mhmodels.quantize(model)                          # fake-quant twin (tf_keras)
    mhmodels.export_tflite(qat, 'multi_max.tflite', quantization='int8')

Importing the package is cheap: TensorFlow / Keras load on the first build.
"""
from mhmodels.builder import build_model
from mhmodels.export import ExportError, ExportResult, export_tflite, tflite_ops
from mhmodels.profile import Profile, profile
from mhmodels.qat import QuantizeError, calibrate, quantize, quantize_scope
from mhmodels.registry import build, get_entry, get_spec, list_models, register, unregister
from mhmodels.spec import LayerSpec, ModelSpec, SpecError
from mhmodels.weights import download_tflite
from mhmodels.preprocessing import decode_predictions, preprocess_input

__version__ = "0.1.0"

__all__ = [
    "build", "build_model", "get_entry", "get_spec", "list_models", "register", "unregister",
    "profile", "Profile", "LayerSpec", "ModelSpec", "SpecError", "download_tflite",
    "quantize", "calibrate", "quantize_scope", "QuantizeError",
    "export_tflite", "tflite_ops", "ExportResult", "ExportError",
    "preprocess_input", "decode_predictions",
]
