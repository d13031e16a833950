"""Spec + width -> Keras model. The only builder: every zoo model and search result goes here.

`frontend='keras'` gives a Keras 3 model (the default, what apps use); `frontend='tf_keras'`
gives the same network in Keras 2, which tfmot needs for fake-quant training. Both are built
by the same code (`mhmodels.layers`) with the same layer names.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence

from mhmodels import layers as L
from mhmodels.grouped_forms import GROUPED_CONV_FORMS  # noqa: F401 (re-exported)
from mhmodels.spec import LayerSpec, ModelSpec, group_count, round8, scale_filters

FRONTENDS = ("keras", "tf_keras")
# How a grouped convolution is written: one Conv2D(groups=g) ('native', one CONV_2D in
# TFLite), split -> g convs -> concat ('split'), or per layer by a rule ('auto:u85'); which
# runs faster depends on the hardware (see `mhmodels.export.grouped_conv_form` and
# `mhmodels.grouped_forms`, where GROUPED_CONV_FORMS is defined; imported above).
POOLINGS = (None, "avg", "max")
DEFAULT_INPUT_SHAPE = (224, 224, 3)


@dataclass(frozen=True)
class ResolvedLayer:
    """Channel counts of one layer at a given width (what the builder will create)."""

    layer: LayerSpec
    name: str
    in_filters: int
    filters: int
    hidden: int  # expanded channels of ibn / fused_ibn, else == in_filters
    se_squeeze: int | None
    groups: int | None = None  # of the grouped KxK conv (LayerSpec.group_size), else None


def keras_module(frontend: str) -> ModuleType:
    """The Keras module of a front-end name.

    Args:
      frontend: 'keras' (Keras 3) or 'tf_keras' (Keras 2, what tfmot quantizes).
    Returns:
      The imported module.
    Raises:
      ValueError: an unknown front-end name.
    """
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")
    return importlib.import_module(frontend)


def check_width(width: float) -> float:
    """`width` as a float, or a ValueError saying why it is not a usable width multiplier."""
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ValueError(f"width must be a number, got {width!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if width > 8:
        raise ValueError(f"width {width!r} is unreasonably large (expected a multiplier like "
                         "0.35 to 2.0)")
    return float(width)


def total_stride(spec: ModelSpec) -> int:
    """The product of every stride before global pooling (the smallest usable input size)."""
    stride = spec.stem.stride
    for layer in (*spec.blocks, *spec.head):
        stride *= layer.stride
    return stride


def check_input_shape(spec: ModelSpec, input_shape: Sequence[int | None],
                      allow_dynamic: bool = False) -> tuple:
    """`input_shape` as a (height, width, 3) tuple, or a ValueError naming the problem.

    Args:
      spec: the network (its total stride is the smallest usable height / width).
      input_shape: (height, width, channels); channels must be 3 (RGB, channels_last).
      allow_dynamic: accept None for height and width (fully convolutional use, i.e.
        include_top=False); a classifier needs a fixed size.
    Returns:
      The shape as a tuple.
    Raises:
      ValueError: not 3 integer sizes, not 3 channels, None where a fixed size is needed, or a
        size below the network's total stride.
    """
    shape = tuple(input_shape) if input_shape is not None else ()

    def size_ok(d):
        return (d is None and allow_dynamic) or (isinstance(d, int) and not isinstance(d, bool))

    if len(shape) != 3 or not all(size_ok(d) for d in shape[:2]) or not size_ok(shape[2]):
        raise ValueError(f"input_shape must be (height, width, 3) with integer sizes, got "
                         f"{input_shape!r} (a fixed size is required with include_top=True: the "
                         "classifier, TFLite export and XNNPACK need static shapes; use "
                         "include_top=False for (None, None, 3))")
    height, width_px, chans = shape
    if chans != 3:
        raise ValueError(f"input_shape must have 3 channels (RGB), got {chans} in {shape}")
    minimum = total_stride(spec)
    if any(d is not None and d < minimum for d in (height, width_px)):
        raise ValueError(f"input_shape {shape} is too small for {spec.name!r}: height and width "
                         f"must be at least {minimum} (the network's total stride)")
    return shape


def check_data_format(k: ModuleType) -> None:
    """Refuse a global `channels_first` setting instead of building a wrong network silently.

    The networks are NHWC (what TFLite and XNNPACK run); under `channels_first` every Keras
    layer would read the channel axis from position 1 and scramble the spec's shapes.

    Raises:
      ValueError: `keras.config.image_data_format()` (tf_keras: `backend.image_data_format()`)
        is 'channels_first'.
    """
    data_format = k.backend.image_data_format()
    if data_format != "channels_last":
        setter = ("keras.config.set_image_data_format" if k.__name__ == "keras"
                  else f"{k.__name__}.backend.set_image_data_format")
        raise ValueError(f"mhmodels builds channels_last (NHWC) networks, but the image data "
                         f"format is {data_format!r}; call {setter}('channels_last') before "
                         "building (transpose NCHW images with np.transpose(x, (0, 2, 3, 1)))")


def format_width(width: float) -> str:
    """The width as it appears in model names: 2 decimals (0.75 -> '0.75'), more if needed."""
    text = f"{width:.2f}"
    return text if float(text) == width else repr(float(width))


def default_model_name(spec: ModelSpec, width: float, input_shape: Sequence[int | None]) -> str:
    """`<spec>_<width>_<resolution>` as keras.applications does, e.g. 'multi_max_1.00_224'.

    The resolution is the input size ('96x128' when not square) and is left out when the size
    is dynamic. `mhmodels.quantize` parses this name back (`parse_model_name`) to rebuild a
    model reloaded from a `.keras` file.
    """
    height, width_px = input_shape[0], input_shape[1]
    name = f"{spec.name}_{format_width(width)}"
    if height is not None and width_px is not None:
        name += f"_{height}" if height == width_px else f"_{height}x{width_px}"
    return name


WIDTH_AND_SIZE = re.compile(r"^(?P<width>\d+(\.\d+)?)(_\d+(x\d+)?)?$")


def parse_model_name(name: str, spec_names: Iterable[str]) -> tuple[str, float] | None:
    """(spec name, width) of a default model name such as 'multi_max_0.75_224'.

    Args:
      name: a model name.
      spec_names: the known spec names (the longest matching prefix wins).
    Returns:
      (spec name, width), or None when `name` is not `<spec>_<width>[_<size>]`.
    """
    for spec_name in sorted(spec_names, key=len, reverse=True):
        if name.startswith(spec_name + "_"):
            match = WIDTH_AND_SIZE.match(name[len(spec_name) + 1:])
            if match:
                return spec_name, float(match.group("width"))
    return None


def _mixed_compute(k: ModuleType) -> bool:
    """True under a mixed-precision global policy (float16 / bfloat16 compute)."""
    policy = k.mixed_precision.global_policy()
    return str(policy.compute_dtype) in ("float16", "bfloat16")


def resolve(spec: ModelSpec, width: float = 1.0, in_channels: int = 3) -> list[ResolvedLayer]:
    """Every layer's channel counts at `width`, in network order (stem, blocks, head, top)."""
    width = check_width(width)

    def scaled(value: float, layer: LayerSpec | None = None) -> int:
        return scale_filters(value, width, spec.width_rounding,
                             shrink=True if layer is None else layer.shrink)

    def rounded(value: float) -> int:
        return max(1, int(value)) if spec.width_rounding == "truncate" else round8(value)

    out = []
    cin = in_channels
    # Group counts of grouped convs come from width 1.0 (see LayerSpec.group_size).
    width_one = resolve(spec, 1.0, in_channels) if width != 1.0 and any(
        b.group_size for b in spec.blocks) else None
    named = [(spec.stem, "stem")]
    named += [(b, f"block{i}") for i, b in enumerate(spec.blocks)]
    named += [(h, f"head{i}") for i, h in enumerate(spec.head)]
    named += [(t, f"top{i}") for i, t in enumerate(spec.top)]
    for layer, name in named:
        filters = scaled(layer.filters, layer)
        hidden = cin
        if layer.kind in ("ibn", "fused_ibn") and layer.expansion != 1:
            hidden = rounded(layer.expansion * cin)
        squeeze = rounded(hidden * layer.se_ratio) if layer.se_ratio else None
        groups = group_count(layer, cin, hidden, f"spec {spec.name!r} {name}",
                             None if width == 1.0 or layer.group_size is None
                             else width_one[len(out)].groups)
        out.append(ResolvedLayer(layer, name, cin, filters, hidden, squeeze, groups))
        cin = filters
    return out


def build_model(spec: ModelSpec, width: float = 1.0, *,
                input_shape: Sequence[int | None] | None = None, num_classes: int = 1001,
                include_top: bool = True, pooling: str | None = None, dropout: float = 0.2,
                classifier_activation: str | None = None, frontend: str = "keras",
                name: str | None = None, input_tensor=None,
                input_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                grouped_conv: str = "native"):
    """Decode `spec` at `width` into a Keras model of the chosen front-end.

    Args:
      spec: the architecture.
      width: width multiplier (channel counts scale with the spec's rounding rule).
      input_shape: (height, width, 3), channels_last. Default: taken from `input_tensor`,
        else (224, 224, 3). (None, None, 3) is allowed with include_top=False.
      num_classes: classifier outputs (include_top=True only).
      include_top: end with pooling, the spec's top layers, dropout and the classifier; else
        end after the head (the layers before global pooling), pooled per `pooling`.
      pooling: None, 'avg' or 'max' (include_top=False only), as in keras.applications.
      dropout: rate of the dropout before the classifier (0 for none).
      classifier_activation: None gives logits; e.g. 'softmax'. Under a mixed-precision
        policy the classifier computes in float32, so the outputs are float32.
      frontend: 'keras' (Keras 3) or 'tf_keras' (the Keras 2 twin for tfmot QAT).
      name: the model's name; default `<spec>_<width>_<size>` (e.g. 'multi_max_1.00_224'),
        so two widths of one network can live in one Keras graph.
      input_tensor: a tensor (e.g. the output of another layer) to build the network on,
        as in keras.applications; the model's inputs are then that tensor's source inputs.
      input_normalization: (scale, offset) per RGB channel of a fixed `Rescaling` layer
        ('input_normalization') before the stem: a checkpoint trained on another input than
        our [-1, 1] (see `mhmodels.preprocessing.input_normalization`). None: no such layer.
      grouped_conv: 'native' (one grouped Conv2D), 'split' (split -> one conv per group ->
        concat) or a per-layer form ('auto:u85': each conv's form by a measured rule,
        `mhmodels.grouped_forms`) for the grouped convs of blocks with `group_size`; the same
        function either way (`with_grouped_conv` maps weights between forms).
    Returns:
      A functional model of the front-end; `build_args(model)` tells how it was built.
    Raises:
      ValueError: a bad width, input shape (not 3 channels, too small, dynamic with a top,
        or disagreeing with `input_tensor`), num_classes, pooling or dropout; a
        channels_first image data format.
    """
    k = keras_module(frontend)
    check_data_format(k)
    shape = _input_shape_of(spec, input_shape, input_tensor, include_top)
    _check_head_options(num_classes, include_top, pooling, dropout, grouped_conv)
    resolved = resolve(spec, width, in_channels=shape[2])
    inputs, x = _inputs(k, shape, input_tensor)
    if input_normalization is not None:
        input_normalization = _checked_normalization(input_normalization, shape[2])
        scale, offset = input_normalization
        x = k.layers.Rescaling(list(scale), list(offset), name="input_normalization")(x)
    for r in resolved:
        if r.name.startswith("top"):
            break
        x = L.block(k, x, r.layer, r.filters, r.hidden, r.se_squeeze, r.name,
                    groups=r.groups, grouped_conv=grouped_conv)
    if include_top:
        x = _classifier(k, x, spec, resolved, num_classes, dropout, classifier_activation)
    elif pooling == "avg":
        x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = k.layers.GlobalMaxPooling2D(name="pool")(x)
    model = k.Model(inputs, x, name=name or default_model_name(spec, float(width), shape))
    # What it takes to rebuild this network elsewhere (the tf_keras twin for QAT, export).
    setattr(model, BUILD_ARGS_ATTR, BuildArgs(spec, float(width), shape, num_classes, include_top,
                                           pooling, float(dropout), classifier_activation,
                                           input_normalization, grouped_conv))
    return model


def _check_head_options(num_classes, include_top: bool, pooling, dropout,
                        grouped_conv) -> None:
    """Refuse a bad num_classes (with a top), pooling, dropout or grouped-conv form."""
    if include_top:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if grouped_conv not in GROUPED_CONV_FORMS:
        raise ValueError(f"grouped_conv must be one of {GROUPED_CONV_FORMS}, got {grouped_conv!r}")


def _checked_normalization(input_normalization, channels: int) -> tuple[tuple, tuple]:
    """(scale, offset) as tuples of floats, one per input channel."""
    scale, offset = (tuple(float(v) for v in part) for part in input_normalization)
    if len(scale) != channels or len(offset) != channels:
        raise ValueError(f"input_normalization needs {channels} scales and offsets, got "
                         f"{input_normalization!r}")
    return scale, offset


def _classifier(k: ModuleType, x, spec: ModelSpec, resolved, num_classes: int, dropout: float,
                classifier_activation: str | None):
    """The top: global pooling, the spec's top layers, dropout and the Dense classifier."""
    x = k.layers.GlobalAveragePooling2D(keepdims=bool(spec.top), name="pool")(x)
    for r in resolved:
        if r.name.startswith("top"):
            x = L.block(k, x, r.layer, r.filters, r.hidden, r.se_squeeze, r.name)
    if spec.top:
        x = k.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = k.layers.Dropout(dropout, name="dropout")(x)
    # Logits in float32 under mixed precision (float16 logits overflow the softmax).
    return k.layers.Dense(num_classes, activation=classifier_activation,
                          kernel_initializer=L.dense_init(k), name="classifier",
                          dtype="float32" if _mixed_compute(k) else None)(x)


def _input_shape_of(spec: ModelSpec, input_shape, input_tensor, include_top: bool) -> tuple:
    """The checked (height, width, 3): `input_shape`, else `input_tensor`'s, else 224x224."""
    if input_tensor is not None:
        tensor_shape = tuple(None if d is None else int(d) for d in input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != tensor_shape:
            raise ValueError(f"input_shape {tuple(input_shape)} disagrees with input_tensor's "
                             f"shape {tensor_shape}; pass one of them")
        input_shape = tensor_shape
    elif input_shape is None:
        input_shape = DEFAULT_INPUT_SHAPE
    return check_input_shape(spec, input_shape, allow_dynamic=not include_top)


def _inputs(k: ModuleType, shape: tuple, input_tensor):
    """(the model's inputs, the image tensor the network starts from): a new Input, or
    `input_tensor` (a Keras tensor's source inputs; a backend tensor wrapped as
    keras.applications does)."""
    if input_tensor is None:
        image = k.Input(shape=shape, name="image")
        return image, image
    if k.backend.is_keras_tensor(input_tensor):
        sources = k.utils.get_source_inputs(input_tensor)
        return (sources[0] if len(sources) == 1 else sources), input_tensor
    image = k.Input(tensor=input_tensor, name="image")
    return image, image


@dataclass(frozen=True)
class BuildArgs:
    """The arguments a model was built with; `build_model(**args.kwargs())` rebuilds it."""

    spec: ModelSpec
    width: float
    input_shape: tuple[int, int, int]
    num_classes: int
    include_top: bool
    pooling: str | None
    dropout: float
    classifier_activation: str | None
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    grouped_conv: str = "native"

    def kwargs(self) -> dict:
        return {f: getattr(self, f) for f in BUILD_ARG_KEYS}


# The attribute `build_model` records a model's BuildArgs in (read by QAT, export, features).
BUILD_ARGS_ATTR = "_mhmodels_build_args"
BUILD_ARG_KEYS = tuple(BuildArgs.__dataclass_fields__)


def build_args(model) -> BuildArgs | None:
    """How `model` was built (its BuildArgs) if `build_model` made it in this process, else None.

    The record does not survive `model.save()`; `mhmodels.quantize` then falls back on the
    default model name (`parse_model_name`) and the model's layers.
    """
    recorded = getattr(model, BUILD_ARGS_ATTR, None)
    return recorded if isinstance(recorded, BuildArgs) else None


def recorded_build_args(model) -> dict[str, Any]:
    """The build record of `model` as a dict ({} if absent).

    Accepts the builder's `BuildArgs` or a plain mapping (a record written by hand).

    Raises:
      TypeError: the attribute holds something else.
    """
    recorded = getattr(model, BUILD_ARGS_ATTR, None)
    if recorded is None:
        return {}
    if isinstance(recorded, BuildArgs):
        return recorded.kwargs()
    if isinstance(recorded, Mapping):
        return dict(recorded)
    raise TypeError(f"model.{BUILD_ARGS_ATTR} is a {type(recorded).__name__}; expected the "
                    "builder's BuildArgs or a dict")


def builder_kwargs(args: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `build_model` (besides spec and width) among `args`, with
    dropout 0 when unset (a rebuilt twin never needs a random dropout)."""
    out = {k: args[k] for k in BUILD_ARG_KEYS[2:] if args.get(k) is not None}
    out.setdefault("dropout", 0.0)
    return out


def frontend_of(model) -> str:
    """'keras' (Keras 3) or 'tf_keras' (Keras 2), from the model's class: the one front-end
    check of the package.

    Raises:
      TypeError: `model` is not a Keras model.
    """
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        if module.startswith("tf_keras") or module.startswith("tensorflow.python.keras"):
            return "tf_keras"
        if module.startswith("keras"):
            return "keras"
    raise TypeError(f"expected a Keras model, got {type(model).__name__}")


def _low_precision_layers(model) -> list[str]:
    """Names of the layers of `model` (nested models included) that compute below float32."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found += _low_precision_layers(layer)
        elif str(getattr(layer, "compute_dtype", "float32")) in ("float16", "bfloat16"):
            found.append(layer.name)
    return found


def float32_copy(model):
    """`model` itself if it computes in float32, else a float32 copy with the same weights.

    A model built under a mixed-precision policy ('mixed_float16', 'mixed_bfloat16') keeps
    float32 variables but computes in 16 bits; the TFLite converter cannot lower its float16
    convolutions, and a float TFLite model is float32 anyway. The copy is a clone of the same
    graph (nested models too) with every layer's dtype set to float32, built with the weights
    copied over, whatever the global policy is now.

    Args:
      model: a Keras 3 functional or sequential model.
    Returns:
      A Keras 3 model computing in float32 (its outputs equal `model`'s up to float16
      rounding); `build_args` is carried over.
    Raises:
      ValueError: `model` is a subclassed model that cannot be cloned.
    """
    import keras

    if not _low_precision_layers(model):
        return model

    def clone(layer):
        if isinstance(layer, keras.Model):
            return float32_copy(layer)
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    if build_args(model) is not None:
        setattr(copy, BUILD_ARGS_ATTR, build_args(model))
    return copy


def with_grouped_conv(model, form: str):
    """`model` with its grouped convolutions written in `form` ('native', 'split' or a
    per-layer form such as 'auto:u85').

    The same function: a copy built by `build_model` from the model's build record in the same
    front-end, the weights copied by name, a native grouped kernel (K, K, Cin/g, Cout) handed
    to the split form's per-group convs `{name}_g{i}` as its output-channel slices (and
    concatenated back the other way).

    Args:
      model: a Keras 3 or tf_keras model built by `build_model` (it carries a build record).
      form: 'native' (one grouped Conv2D), 'split' (split -> conv per group -> concat) or a
        per-layer form (`mhmodels.grouped_forms.GROUPED_CONV_FORMS`); layer by layer, the
        same mapping serves mixed models.
    Returns:
      The model in `form`, computing the same logits; `model` itself when already in `form`.
    Raises:
      ValueError: `form` is not a known form, or `model` has no build record (not built by
        `build_model` in this process).
    """
    import numpy as np

    if form not in GROUPED_CONV_FORMS:
        raise ValueError(f"grouped_conv must be one of {GROUPED_CONV_FORMS}, got {form!r}")
    args = build_args(model)
    if args is None:
        raise ValueError(f"model {model.name!r} has no mhmodels build record: rebuild it with "
                         f"build_model(..., grouped_conv={form!r})")
    if args.grouped_conv == form:
        return model
    frontend = frontend_of(model)
    target = build_model(**{**args.kwargs(), "grouped_conv": form}, frontend=frontend,
                         name=model.name)
    source = {layer.name: layer for layer in model.layers if layer.weights}
    group_part = re.compile(r"^(?P<base>.*)_g(?P<index>\d+)(?P<suffix>_bn)?$")
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name in source:
            layer.set_weights(source[layer.name].get_weights())
            continue
        m = group_part.match(layer.name)
        if m and m["base"] + (m["suffix"] or "") in source:  # native -> split: one slice
            whole = source[m["base"] + (m["suffix"] or "")]
            groups = sum(1 for other in target.layers if (g := group_part.match(other.name))
                         and g["base"] == m["base"] and g["suffix"] == m["suffix"])
            layer.set_weights([np.split(w, groups, axis=-1)[int(m["index"])]
                               for w in whole.get_weights()])
            continue
        base, suffix = (layer.name[:-3], "_bn") if layer.name.endswith("_bn") else (layer.name, "")
        pieces = []
        while f"{base}_g{len(pieces)}{suffix}" in source:  # split -> native: concatenated
            pieces.append(source[f"{base}_g{len(pieces)}{suffix}"].get_weights())
        if not pieces:
            raise ValueError(f"layer {layer.name!r} has no counterpart in {model.name!r}")
        layer.set_weights([np.concatenate(ws, axis=-1) for ws in zip(*pieces)])
    return target
