"""Quantization-aware training (QAT): a trainable fake-quant twin of a zoo model.

    model = mhmodels.build('multi_avg', width=0.5, input_shape=(96, 96, 3), num_classes=10)
    qat = mhmodels.quantize(model)         # tf_keras model with fake-quant ops, same weights
    qat.compile(...); qat.fit(...)         # fine-tune with 8-bit rounding simulated
    mhmodels.export_tflite(qat, 'm.tflite', quantization='int8')

tensorflow-model-optimization (tfmot) only accepts Keras 2 (tf_keras) models, so `quantize`
rebuilds the same spec with `frontend='tf_keras'` (the builder gives both front-ends the same
layer names), copies the weights over by layer name, annotates every layer and applies the
default 8-bit scheme. Layers the scheme does not know are given explicit configs here:

  Multiply (hard-swish, squeeze-excite scaling)  -> fake-quant of the output only
  Rescaling (the +3 and the /6 of hard-sigmoid)   -> fake-quant of the output only

Everything else (Conv2D, DepthwiseConv2D + BatchNormalization patterns, ReLU, Add,
GlobalAveragePooling2D, Dense with a per-tensor kernel quantizer, Dropout, Flatten) uses the
default 8-bit registry, with one tfmot bug fixed (see `_scheme_class`: tfmot 0.8.1 leaves the
kernel of a Conv2D followed directly by a ReLU -- the squeeze-excite reduce conv -- in float).
A layer left without the quantization it needs is an error (`check_quantized`), never skipped.

How `quantize` knows what to rebuild: `mhmodels.build_model` records its arguments on the
model as `model._mhmodels_build_args` (the builder's `BuildArgs`: spec, width, input_shape,
num_classes, include_top, pooling, dropout, classifier_activation; a plain dict works too).
Explicit keyword arguments to `quantize` override it. Without the attribute, `spec` (a
ModelSpec, a zoo name or a spec dict) and `width` must be given; input shape, classes, top and
dropout are then read off the model.

tfmot starts every activation range at [-6, 6] and moves it slowly (EMA 0.999); `calibrate`
(or `quantize(..., calibration_data=x)`) sets the ranges from data first, as post-training
calibration would.

Importing tfmot sets TF_USE_LEGACY_KERAS=1 for the process. `load_tfmot()` resolves `tf.keras`
first and restores the variable afterwards, so Keras 3 use in the same process is unaffected.
Importing this module does not import TensorFlow: tfmot loads on the first `quantize` call.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Any, Mapping, Sequence

from mhmodels.builder import (BUILD_ARG_KEYS, BUILD_ARGS_ATTR, builder_kwargs, build_model,
                              frontend_of, parse_model_name, recorded_build_args)
from mhmodels.registry import get_spec, list_models
from mhmodels.spec import ModelSpec

QAT_ATTR = "_mhmodels_qat"

# Layer types the default 8-bit scheme leaves unquantized on purpose (no arithmetic).
PASS_THROUGH = ("InputLayer", "Dropout", "Flatten", "Reshape", "GlobalMaxPooling2D")
# Layer types that carry weights and therefore must end up with weight quantizers.
WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")
# Layer types given an output-only config by this module.
OUTPUT_ONLY = ("Multiply", "Rescaling")
# Layer types given no quantization at all: the channel split of a grouped conv written in
# the 'split' form (`layers.grouped_conv_bn`) only moves values; its input's range holds.
NO_QUANTIZATION = ("ChannelSplit",)


class QuantizeError(ValueError):
    """The model cannot be turned into a QAT twin (unknown layer, missing build args, ...)."""


# --------------------------------------------------------------------------------------------
# Lazy tfmot import, keeping Keras 3 usable in the same process.

TFMOT_VERSION = "0.8.1"


def install_command(tf_version: str | None = None) -> str:
    """The pip command that adds QAT's two packages beside the installed TensorFlow.

    tensorflow-model-optimization and tf-keras declare a dependency on the `tensorflow`
    distribution (a second TensorFlow beside tensorflow-cpu / tensorflow-tpu) and cap
    absl-py below 2, so they are installed without their dependencies (mhmodels' own
    dependencies cover what they import). tf-keras must match TensorFlow's minor version.

    Args:
      tf_version: TensorFlow's version (default: the installed one, else '2.21').
    Returns:
      e.g. 'pip install --no-deps tf-keras~=2.21.0 tensorflow-model-optimization==0.8.1'.
    """
    if tf_version is None:
        from importlib import metadata
        for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "tf-nightly"):
            try:
                tf_version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    major_minor = ".".join((tf_version or "2.21").split(".")[:2])
    return (f"pip install --no-deps tf-keras~={major_minor}.0 "
            f"tensorflow-model-optimization=={TFMOT_VERSION}")


@functools.lru_cache(maxsize=None)
def load_tfmot():
    """Import tensorflow_model_optimization without changing what `tf.keras` means.

    tfmot's import sets TF_USE_LEGACY_KERAS=1 and then touches `tf.keras`; if `tf.keras` was
    not resolved yet it would become tf_keras for the rest of the process. Resolving it first
    (to whatever the user's environment says) and restoring the variable afterwards keeps the
    process as it was; tfmot itself then uses tf_keras directly, which is what it needs.

    Returns:
      The `tensorflow_model_optimization` module.
    Raises:
      ImportError: tfmot or tf_keras is not installed; the message is the command that
        installs them (`install_command()`).
    """
    import tensorflow as tf

    missing = [m for m in ("tf_keras", "tensorflow_model_optimization")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"mhmodels.quantize needs {' and '.join(missing)} (QAT is an "
                          f"optional part of mhmodels); install them with:\n"
                          f"    {install_command()}")
    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve tf.keras's lazy loader now, under the user's setting (an attribute the loader
    # itself lacks, so that it loads the module).
    getattr(tf.keras, "__version__", None)
    try:
        tfmot = importlib.import_module("tensorflow_model_optimization")
        importlib.import_module("tensorflow_model_optimization.quantization.keras")
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous
    return tfmot


@functools.lru_cache(maxsize=None)
def _configs():
    """The QuantizeConfig classes (defined lazily: they subclass a tfmot class)."""
    tfmot = load_tfmot()
    qk = tfmot.quantization.keras
    quantizers = qk.quantizers

    class OutputQuantizeConfig(qk.QuantizeConfig):
        """Fake-quantize only the layer's output (8-bit, per-tensor, asymmetric).

        For weightless element-wise layers (Multiply, Rescaling): TFLite runs them as int8
        MUL/ADD ops that need the output's range, the inputs' ranges come from upstream.
        """

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            if quantize_weights:
                raise ValueError(f"{layer.name}: OutputQuantizeConfig has no weights")

        def set_quantize_activations(self, layer, quantize_activations):
            if quantize_activations:
                raise ValueError(f"{layer.name}: OutputQuantizeConfig has no activations")

        def get_output_quantizers(self, layer):
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False,
                                                      symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    OutputQuantizeConfig.__name__ = "MhmodelsOutputQuantizeConfig"
    OutputQuantizeConfig.__qualname__ = "MhmodelsOutputQuantizeConfig"
    return {"MhmodelsOutputQuantizeConfig": OutputQuantizeConfig}


@functools.lru_cache(maxsize=None)
def _scheme_class():
    """Default 8-bit scheme with tfmot 0.8.1's `LayerReLUQuantize` transform fixed.

    That transform matches `Add|Conv2D|DepthwiseConv2D|Dense -> ReLU` and, to keep a
    fake-quant from sitting between the two, gives the producer a NoOpQuantizeConfig. Meant for
    Add, it also strips the *kernel* quantizer of a Conv2D/Dense followed by a ReLU without BN
    (the squeeze-excite reduce conv): its weights would stay float. The fixed transform keeps
    NoOp for Add and, for a weighted producer, only turns off its output fake-quant (the
    activation becomes NoOpActivation, as tfmot's own Conv+BN transforms do), so the kernel is
    still quantized and the ReLU carries the output range.
    """
    load_tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_aware_activation, utils as quantize_utils)
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs, default_8bit_quantize_layout_transform as
        layout, default_8bit_quantize_scheme as scheme, default_8bit_transforms as transforms)
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations \
        import model_transformer

    def fixed_replacement(self, match_layer):
        producer = match_layer.input_layers[0]
        if producer.layer["class_name"] in ("Conv2D", "DepthwiseConv2D", "Dense"):
            if producer.metadata.get("quantize_config") is None:  # no user config: default
                producer.layer["config"]["activation"] = quantize_utils.serialize_activation(
                    quantize_aware_activation.NoOpActivation(), use_legacy_format=True)
        else:
            producer.metadata["quantize_config"] = configs.NoOpQuantizeConfig()
        return match_layer

    def fixed_custom_objects(self):
        return {"NoOpQuantizeConfig": configs.NoOpQuantizeConfig,
                "NoOpActivation": quantize_aware_activation.NoOpActivation}

    class LayerReLUQuantize(transforms.LayerReLUQuantize):
        replacement = fixed_replacement
        custom_objects = fixed_custom_objects

    class LayerReluActivationQuantize(transforms.LayerReluActivationQuantize):
        replacement = fixed_replacement
        custom_objects = fixed_custom_objects

    class LayoutTransform(layout.Default8BitQuantizeLayoutTransform):
        """tfmot 0.8.1's Default8BitQuantizeLayoutTransform list, with the two fixed."""

        def apply(self, model, layer_quantize_map):
            t = transforms
            transform_list = [
                t.InputLayerQuantize(),
                t.SeparableConv1DQuantize(),
                t.SeparableConvQuantize(),
                t.Conv2DReshapeBatchNormReLUQuantize(),
                t.Conv2DReshapeBatchNormActivationQuantize(),
                t.Conv2DBatchNormReLUQuantize(),
                t.Conv2DBatchNormActivationQuantize(),
                t.Conv2DReshapeBatchNormQuantize(),
                t.Conv2DBatchNormQuantize(),
                t.ConcatTransform6Inputs(),
                t.ConcatTransform5Inputs(),
                t.ConcatTransform4Inputs(),
                t.ConcatTransform3Inputs(),
                t.ConcatTransform(),
                t.DenseBatchNormQuantize(),
                t.DenseBatchNormReLUQuantize(),
                t.DenseBatchNormActivationQuantize(),
                LayerReLUQuantize(),
                LayerReluActivationQuantize(),
            ]
            return model_transformer.ModelTransformer(
                model, transform_list, set(layer_quantize_map.keys()), layer_quantize_map
            ).transform()

    class Scheme(scheme.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return LayoutTransform()

    return Scheme


def custom_objects() -> dict[str, Any]:
    """Objects needed to deserialize a saved QAT model (pass to `quantize_scope`)."""
    return dict(_configs())


def quantize_scope():
    """`with mhmodels.quantize_scope(): tf_keras.models.load_model(path)` loads a saved QAT model.

    Returns:
      A context manager that makes tfmot's and mhmodels' quantize configs deserialisable.
    Raises:
      ImportError: tfmot or tf_keras is missing (the message is the command to install them).
    """
    tfmot = load_tfmot()
    return tfmot.quantization.keras.quantize_scope(custom_objects())


# --------------------------------------------------------------------------------------------
# Front-end detection and build arguments.

def is_qat_model(model) -> bool:
    """True for a model made by `quantize` (or any tfmot-quantized tf_keras model)."""
    if getattr(model, QAT_ATTR, False):
        return True
    if frontend_of(model) != "tf_keras":
        return False
    return any(type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
               for layer in model.layers)


def _as_spec(spec) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        return get_spec(spec)
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(spec, source="build args")
    raise QuantizeError(f"spec must be a ModelSpec, a zoo model name or a spec dict, got "
                        f"{type(spec).__name__}")


def build_args_of(model, **explicit) -> dict[str, Any]:
    """The builder arguments that rebuild `model`: its attribute, explicit ones, then inference.

    Explicit (non-None) values override `model._mhmodels_build_args`. Without the record
    (e.g. a model reloaded from a `.keras` file), spec and width come from the default model
    name `<spec>_<width>_<size>`; missing input_shape, include_top, num_classes, pooling and
    dropout are read off the model's layers.

    Args:
      model: a Keras 3 or tf_keras model built by mhmodels.
      **explicit: build arguments (BUILD_ARG_KEYS) that override the record; None = unset.
    Returns:
      A dict of BUILD_ARG_KEYS with `spec` as a ModelSpec.
    Raises:
      TypeError: an unknown build argument.
      QuantizeError: spec or width cannot be found.
    """
    try:
        args = recorded_build_args(model)
    except TypeError as err:
        raise QuantizeError(str(err)) from None
    for key, value in explicit.items():
        if key not in BUILD_ARG_KEYS:
            raise TypeError(f"unknown build argument {key!r}; expected one of {BUILD_ARG_KEYS}")
        if value is not None:
            args[key] = value
    if args.get("spec") is None or args.get("width") is None:
        # A reloaded model (keras.models.load_model) lost the record; its default name
        # ('multi_max_0.75_224') still says what it is. copy_weights checks the guess.
        parsed = parse_model_name(model.name, list_models())
        if parsed is not None:
            if args.get("spec") is None:
                args["spec"] = parsed[0]
            if args.get("width") is None:
                args["width"] = parsed[1]
    missing = [k for k in ("spec", "width") if args.get(k) is None]
    if missing:
        raise QuantizeError(
            f"cannot rebuild model {model.name!r} for QAT: {' and '.join(missing)} unknown. "
            f"Build it with mhmodels.build(...) (which records them in "
            f"model.{BUILD_ARGS_ATTR}, and names it <spec>_<width>_<size>, which survives "
            f"model.save) or pass quantize(model, spec=..., width=...).")
    args["spec"] = _as_spec(args["spec"])
    names = {layer.name for layer in model.layers}
    if args.get("input_shape") is None:
        args["input_shape"] = tuple(int(d) for d in model.input_shape[1:])
    args["input_shape"] = tuple(int(d) for d in args["input_shape"])
    if args.get("include_top") is None:
        args["include_top"] = "classifier" in names
    if args.get("input_normalization") is None and "input_normalization" in names:
        layer = model.get_layer("input_normalization")  # a checkpoint's input, kept on reload
        import numpy as np

        args["input_normalization"] = (tuple(np.ravel(layer.scale).tolist()),
                                       tuple(np.ravel(layer.offset).tolist()))
    if args["include_top"]:
        if args.get("num_classes") is None:
            args["num_classes"] = int(model.get_layer("classifier").units)
        if args.get("dropout") is None:
            args["dropout"] = (float(model.get_layer("dropout").rate) if "dropout" in names
                               else 0.0)
        if args.get("classifier_activation") is None and "classifier" in names:
            act = model.get_layer("classifier").activation
            act_name = getattr(act, "__name__", None)
            args["classifier_activation"] = None if act_name in (None, "linear") else act_name
    else:
        args.setdefault("num_classes", 1001)
        args.setdefault("dropout", 0.0)
        if args.get("pooling") is None and "pool" in names:
            kind = type(model.get_layer("pool")).__name__
            args["pooling"] = "max" if "Max" in kind else "avg"
    return args


# --------------------------------------------------------------------------------------------
# Weight transfer.

def copy_weights(source, target) -> int:
    """Copy every weighted layer of `source` into the same-named layer of `target`.

    Works across front-ends (numpy in between). Both models must have the same set of layers
    with weights, with equal shapes; returns the number of layers copied.
    """
    src = {layer.name: layer for layer in source.layers if layer.weights}
    dst = {layer.name: layer for layer in target.layers if layer.weights}
    if set(src) != set(dst):
        only_src = sorted(set(src) - set(dst))[:5]
        only_dst = sorted(set(dst) - set(src))[:5]
        raise QuantizeError(f"models {source.name!r} and {target.name!r} differ: layers only in "
                            f"the first: {only_src}, only in the second: {only_dst}")
    for name, layer in src.items():
        values = layer.get_weights()
        expected = [tuple(w.shape) for w in dst[name].get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise QuantizeError(f"layer {name!r}: weight shapes differ ({got} vs {expected}); "
                                "was the twin built with the same spec and width?")
        dst[name].set_weights(values)
    return len(src)


# --------------------------------------------------------------------------------------------
# Annotation, application and the completeness check.

def _annotate(float_model):
    """Clone `float_model` with every layer annotated for quantization."""
    tfmot = load_tfmot()
    qk = tfmot.quantization.keras
    import tf_keras

    output_only = _configs()["MhmodelsOutputQuantizeConfig"]

    def annotate(layer):
        kind = type(layer).__name__
        if kind in OUTPUT_ONLY:
            return qk.quantize_annotate_layer(layer, quantize_config=output_only())
        if kind in NO_QUANTIZATION:
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit \
                import default_8bit_quantize_configs as configs
            return qk.quantize_annotate_layer(layer, quantize_config=configs.NoOpQuantizeConfig())
        return qk.quantize_annotate_layer(layer)

    clone = tf_keras.models.clone_model(float_model, clone_function=annotate)
    return clone


def quantize_tf_keras(float_model):
    """Apply QAT to a float tf_keras model built by mhmodels (weights are kept)."""
    tfmot = load_tfmot()
    qk = tfmot.quantization.keras
    # The annotation wraps float_model's own layers (shared, weights included);
    # quantize_apply clones them with their weights into the QAT model.
    annotated = _annotate(float_model)
    with qk.quantize_scope(custom_objects()):
        try:
            qat = qk.quantize_apply(annotated, scheme=_scheme_class()())
        except (ValueError, RuntimeError) as err:
            raise QuantizeError(f"tfmot could not quantize {float_model.name!r}: {err}") from err
    check_quantized(float_model, qat)
    return qat


def _wrapped(qat) -> dict[str, Any]:
    out = {}
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None:
            out[inner.name] = layer
    return out


def check_quantized(float_model, qat) -> None:
    """Every layer of `float_model` is quantized as expected in `qat`, or an error says which.

    - weighted layers (Conv2D, DepthwiseConv2D, Dense) are wrapped and quantize their kernel;
      the Dense kernel is per-tensor (per-channel Dense breaks TFLite conversion);
    - BatchNormalization is wrapped (quantized output or folded into its conv's pattern);
    - every other layer is wrapped, except pure data movement (Dropout, Flatten, ...).
    """
    wrapped = _wrapped(qat)
    problems = []
    for layer in float_model.layers:
        kind = type(layer).__name__
        if kind in PASS_THROUGH:
            continue
        wrapper = wrapped.get(layer.name)
        if wrapper is None:
            problems.append(f"{layer.name} ({kind}): not wrapped")
            continue
        config = wrapper.quantize_config
        if kind in WEIGHTED:
            pairs = config.get_weights_and_quantizers(wrapper.layer)
            if not pairs:
                problems.append(f"{layer.name} ({kind}): kernel not quantized")
            if kind == "Dense":
                for _, quantizer in pairs:
                    if getattr(quantizer, "per_axis", False):
                        problems.append(f"{layer.name} (Dense): per-channel kernel quantizer "
                                        "(breaks TFLite conversion; must be per-tensor)")
        elif kind in OUTPUT_ONLY:
            if not config.get_output_quantizers(wrapper.layer):
                problems.append(f"{layer.name} ({kind}): output not quantized")
    if problems:
        raise QuantizeError(f"QAT twin of {float_model.name!r} is incomplete: "
                            + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Range calibration.

def _range_variables(qat):
    """(moving-average (min, max) pairs, every quantizer range variable) of a QAT model."""
    tfmot = load_tfmot()
    moving_average = tfmot.quantization.keras.quantizers.MovingAverageQuantizer
    pairs = []
    every = []

    def add(quantizer, variables):
        if not variables:
            return
        every.extend([variables["min_var"], variables["max_var"]])
        if isinstance(quantizer, moving_average):
            pairs.append((variables["min_var"], variables["max_var"]))

    for layer in qat.layers:
        kind = type(layer).__name__
        if kind == "QuantizeLayer":
            add(layer.quantizer, getattr(layer, "quantizer_vars", None))
        if kind not in ("QuantizeWrapper", "QuantizeWrapperV2"):
            continue
        for _, quantizer, variables in layer._weight_vars:
            add(quantizer, variables)
        for activation in layer._quantize_activations:
            for attr in ("_pre_activation_vars", "_post_activation_vars"):
                add(activation.quantizer, getattr(activation, attr, None))
        if getattr(layer, "_output_quantizers", None):
            add(layer._output_quantizers[0], layer._output_quantizer_vars)
    return pairs, every


def _batches(data, batch_size: int, max_samples: int):
    import numpy as np

    source = data() if callable(data) else data
    if isinstance(source, tuple) and len(source) in (2, 3) and np.ndim(source[0]) == 4:
        source = source[0]  # one (inputs, labels[, weights]) tuple
    if hasattr(source, "shape") and not isinstance(source, (list, tuple)):
        source = [np.asarray(source)]
    taken = 0
    for item in source:
        if isinstance(item, (tuple, list)):
            item = item[0]  # (inputs, labels)
        item = np.asarray(item, dtype=np.float32)
        for start in range(0, len(item), batch_size):
            chunk = item[start:start + batch_size][:max_samples - taken]
            if len(chunk):
                yield chunk
                taken += len(chunk)
            if taken >= max_samples:
                return


def calibrate(qat, data, *, passes: int = 2, batch_size: int = 32, max_samples: int = 256):
    """Set a QAT model's activation ranges from `data` (as post-training calibration does).

    tfmot starts every activation range at [-6, 6] and moves it by an exponential moving
    average with decay 0.999 during training, so a short fine-tune leaves most ranges far from
    the real ones (coarse, or clipping). This runs training-mode forward passes over `data`
    (an array of inputs or an iterable of input batches / (inputs, labels) pairs), reads each
    moving-average quantizer's batch range back from its EMA update, and sets the range to the
    min / max over the data; weight ranges are set by the same passes. `passes` > 1 refines
    layers whose inputs were clipped by the initial ranges. Everything else (batch-norm
    statistics, weights) is left as it was.

    Args:
      qat: a model from `quantize`.
      data: input images preprocessed like the model's inputs (see above for the forms).
      passes: calibration passes over the data.
      batch_size: images per forward pass.
      max_samples: images used at most.
    Returns:
      The number of moving-average ranges set.
    Raises:
      ValueError: `data` is empty, or lies outside [-1.5, 1.5] (not [-1, 1] input).
      QuantizeError: `qat` has no moving-average quantizers (not a model from `quantize`).
    """
    import numpy as np
    import tensorflow as tf

    batches = list(_batches(data, batch_size, max_samples))
    if not batches:
        raise ValueError("calibration data is empty")
    from mhmodels.preprocessing import check_calibration_range
    check_calibration_range(batches, "calibration data")  # the models of quantize: [-1, 1]
    pairs, range_vars = _range_variables(qat)
    if not pairs:
        raise QuantizeError(f"model {qat.name!r} has no moving-average quantizers: is it a QAT "
                            "model from mhmodels.quantize?")
    range_ids = {id(v) for v in range_vars}
    keep = [v for v in qat.variables if id(v) not in range_ids]
    snapshot = [v.numpy() for v in keep]
    # tf.__internal__.train.assign_moving_average: var -= (var - value) * (1 - decay)
    rate = float(np.float32(1.0) - np.float32(0.999))
    try:
        for _ in range(passes):
            lows = [None] * len(pairs)
            highs = [None] * len(pairs)
            start = [(lo.numpy(), hi.numpy()) for lo, hi in pairs]
            for batch in batches:
                before = [(lo.numpy(), hi.numpy()) for lo, hi in pairs]
                qat(tf.constant(batch), training=True)
                for i, ((lo, hi), (old_lo, old_hi)) in enumerate(zip(pairs, before)):
                    seen_lo = old_lo + (lo.numpy() - old_lo) / rate
                    seen_hi = old_hi + (hi.numpy() - old_hi) / rate
                    lows[i] = seen_lo if lows[i] is None else np.minimum(lows[i], seen_lo)
                    highs[i] = seen_hi if highs[i] is None else np.maximum(highs[i], seen_hi)
                for (lo, hi), (old_lo, old_hi) in zip(pairs, start):  # same ranges per batch
                    lo.assign(old_lo)
                    hi.assign(old_hi)
            for (lo, hi), low, high in zip(pairs, lows, highs):
                lo.assign(np.minimum(low, 0.0).astype(np.float32))
                hi.assign(np.maximum(high, 0.0).astype(np.float32))
    finally:
        for variable, value in zip(keep, snapshot):
            variable.assign(value)
    return len(pairs)


# --------------------------------------------------------------------------------------------
# Models that wrap a zoo backbone: keras.Model(image, Dense(5)(backbone(image))).

# Config keys of Keras 3 layers that tf_keras layers do not take, dropped when unset.
_KERAS3_ONLY_KEYS = ("lora_rank", "lora_alpha", "quantization_config", "synchronized")


def _nested_models(model) -> list:
    return [layer for layer in model.layers if hasattr(layer, "layers")]


def _tf_keras_layer(layer):
    """A tf_keras layer with `layer`'s class, name and config (a built-in Keras 3 layer)."""
    import inspect

    import tf_keras

    kind = type(layer).__name__
    cls = getattr(tf_keras.layers, kind, None)
    if cls is None or type(layer).__module__.split(".")[0] != "keras":
        raise QuantizeError(f"layer {layer.name!r} ({kind}) around the zoo backbone has no "
                            "tf_keras twin for QAT (only built-in Keras layers are supported)")
    config = dict(layer.get_config())
    if isinstance(config.get("dtype"), Mapping):  # Keras 3 serialises its DTypePolicy
        config["dtype"] = config["dtype"].get("config", {}).get("name", "float32")
    accepted = set(inspect.signature(cls.__init__).parameters)
    for key in _KERAS3_ONLY_KEYS:
        if key in config and key not in accepted:
            if config[key] not in (None, False, 0):
                raise QuantizeError(f"layer {layer.name!r} ({kind}) uses {key}={config[key]!r}, "
                                    "which tf_keras (and so tfmot) cannot express")
            config.pop(key)
    for key in [k for k in config if k.endswith("_initializer")]:
        config.pop(key)  # the weights are copied over: initializers do not matter
    try:
        return tf_keras.layers.deserialize({"class_name": kind, "config": config})
    except (TypeError, ValueError) as err:
        raise QuantizeError(f"layer {layer.name!r} ({kind}) around the zoo backbone could not "
                            f"be rebuilt in tf_keras for QAT: {err}") from err


def _flat_tf_keras_twin(model):
    """A flat float tf_keras twin of a Keras 3 model that calls zoo backbones as layers.

    tfmot cannot quantize a model nested in another, so each backbone is rebuilt inline (the
    builder's `input_tensor=`) and the other layers are rebuilt from their configs; the graph
    is walked in Keras' own order, so any functional wiring works. Weights are copied by name.
    """
    import tf_keras


    sources = {}  # tf_keras layer name -> the Keras 3 layer whose weights it takes
    backbones = []

    def twin_of(operation):
        if hasattr(operation, "layers"):  # a nested zoo model: inline it
            args = build_args_of(operation)
            backbones.append(operation.name)

            def inline(x, **_):
                built = build_model(args["spec"], args["width"], frontend="tf_keras",
                                    input_tensor=x, **builder_kwargs(args))
                for layer in operation.layers:
                    sources[layer.name] = layer
                return built.output
            return inline
        twin = _tf_keras_layer(operation)
        sources[twin.name] = operation
        return lambda *a, **kw: twin(*a, **{k: v for k, v in kw.items() if k != "training"})

    inputs = [tf_keras.Input(shape=tuple(t.shape[1:]), name=t.name.split(":")[0],
                             dtype=str(t.dtype)) for t in model.inputs]
    graph = getattr(model, "_functional", None) or model  # a Sequential runs a Functional
    if not hasattr(graph, "_run_through_graph"):
        raise QuantizeError(f"model {model.name!r} is not a functional or sequential model; "
                            "quantize its zoo backbone, or pass spec= and width=")
    outputs = graph._run_through_graph(inputs, operation_fn=twin_of)
    flat = tf_keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    for layer in flat.layers:
        if layer.weights:
            if layer.name not in sources:
                raise QuantizeError(f"cannot map layer {layer.name!r} of the QAT twin of "
                                    f"{model.name!r} back to a layer of the model")
            layer.set_weights(sources[layer.name].get_weights())
    return flat, backbones


def quantize(model, *, spec: ModelSpec | str | Mapping | None = None, width: float | None = None,
             input_shape: Sequence[int] | None = None, num_classes: int | None = None,
             include_top: bool | None = None, pooling: str | None = None,
             dropout: float | None = None, classifier_activation: str | None = None,
             copy: bool = True, calibration_data: Any = None):
    """A trainable fake-quant (QAT) twin of `model`, as a tf_keras model.

    `model` is a Keras 3 model built by mhmodels (the usual case) or a float tf_keras model
    built by mhmodels with `frontend='tf_keras'`. For a Keras 3 model the same spec is rebuilt
    in tf_keras (arguments from `model._mhmodels_build_args`, overridden by the keyword
    arguments here) and, with `copy=True`, the weights are copied over by layer name.

    `calibration_data` (optional, input images preprocessed like the model's inputs): set the
    activation ranges from it at once (`calibrate`) instead of tfmot's [-6, 6] starting ranges;
    recommended before a short fine-tune of a pretrained model.

    A Keras 3 model that calls zoo models as layers (transfer learning:
    `keras.Model(image, Dense(5)(backbone(image)))`, or a Sequential) is quantized as one flat
    network: each backbone is rebuilt inline in tf_keras and the built-in layers around it are
    rebuilt from their configs, weights copied by name. A model reloaded from a `.keras` file
    is recognised by its default name `<spec>_<width>_<size>`.

    The result records its build arguments in `qat._mhmodels_build_args` and is recognised
    by `mhmodels.export_tflite`, which converts it with its learned ranges.

    Args:
      model: the float model (see above).
      spec, width, input_shape, num_classes, include_top, pooling, dropout,
        classifier_activation: override the recorded build arguments (needed for a model
        that is neither built by mhmodels in this process nor named by default).
      copy: copy the float weights into the twin (False: fresh initial weights).
      calibration_data: optional input images to set the activation ranges from.
    Returns:
      A tf_keras model with fake-quant ops, trainable with compile() / fit().
    Raises:
      ImportError: tensorflow-model-optimization or tf-keras is missing; the message is the
        pip command that installs them beside the installed TensorFlow.
      QuantizeError: the model is already quantized, its architecture cannot be recovered,
        weights do not match the rebuilt network, a layer has no tf_keras twin, or a layer is
        left without the quantization it needs.
    """
    explicit = dict(spec=spec, width=width, input_shape=input_shape, num_classes=num_classes,
                    include_top=include_top, pooling=pooling, dropout=dropout,
                    classifier_activation=classifier_activation)
    frontend = frontend_of(model)
    if is_qat_model(model):
        raise QuantizeError(f"model {model.name!r} is already quantization-aware")
    load_tfmot()

    if frontend == "tf_keras" and not any(v is not None for v in (spec, width)):
        float_twin = model
        args = recorded_build_args(model)
    elif (frontend == "keras" and _nested_models(model) and not recorded_build_args(model)
          and not any(v is not None for v in explicit.values())):
        float_twin, backbones = _flat_tf_keras_twin(model)
        args = {"wraps": backbones}
    else:
        args = build_args_of(model, **explicit)
        float_twin = build_model(args["spec"], args["width"], frontend="tf_keras",
                                 name=model.name, **builder_kwargs(args))
        if copy:
            copy_weights(model, float_twin)
    qat = quantize_tf_keras(float_twin)
    object.__setattr__(qat, BUILD_ARGS_ATTR,
                       getattr(float_twin, BUILD_ARGS_ATTR, None) or dict(args))
    object.__setattr__(qat, QAT_ATTR, True)
    if calibration_data is not None:
        calibrate(qat, calibration_data)
    return qat
