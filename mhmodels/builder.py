"""Spec + width -> Keras model. The only builder: every zoo model and search result goes here.

`frontend='keras'` gives a Keras 3 model (the default, what apps use); `frontend='tf_keras'`
gives the same network in Keras 2, which tfmot needs for fake-quant training. Both are built
by the same code (`mhmodels.layers`) with the same layer names.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

from mhmodels import layers as L
from mhmodels.spec import LayerSpec, ModelSpec, round8, scale_filters

FRONTENDS = ("keras", "tf_keras")
POOLINGS = (None, "avg", "max")


@dataclass(frozen=True)
class ResolvedLayer:
    """Channel counts of one layer at a given width (what the builder will create)."""

    layer: LayerSpec
    name: str
    in_filters: int
    filters: int
    hidden: int  # expanded channels of ibn / fused_ibn, else == in_filters
    se_squeeze: int | None


def keras_module(frontend: str) -> ModuleType:
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")
    return importlib.import_module(frontend)


def check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ValueError(f"width must be a number, got {width!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if width > 8:
        raise ValueError(f"width {width!r} is unreasonably large (expected a multiplier like "
                         "0.35 to 2.0)")
    return float(width)


def total_stride(spec: ModelSpec) -> int:
    stride = spec.stem.stride
    for layer in (*spec.blocks, *spec.head):
        stride *= layer.stride
    return stride


def check_input_shape(spec: ModelSpec, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape) if input_shape is not None else ()
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ValueError(f"input_shape must be (height, width, 3) with integer sizes, got "
                         f"{input_shape!r} (a fixed size is required: TFLite export and "
                         "XNNPACK need static shapes)")
    height, width_px, chans = shape
    if chans != 3:
        raise ValueError(f"input_shape must have 3 channels (RGB), got {chans} in {shape}")
    minimum = total_stride(spec)
    if height < minimum or width_px < minimum:
        raise ValueError(f"input_shape {shape} is too small for {spec.name!r}: height and width "
                         f"must be at least {minimum} (the network's total stride)")
    return shape  # type: ignore[return-value]


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
        out.append(ResolvedLayer(layer, name, cin, filters, hidden, squeeze))
        cin = filters
    return out


def build_model(spec: ModelSpec, width: float = 1.0, *,
                input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1001,
                include_top: bool = True, pooling: str | None = None, dropout: float = 0.2,
                classifier_activation: str | None = None, frontend: str = "keras",
                name: str | None = None):
    """Decode `spec` at `width` into a Keras model of the chosen front-end.

    With include_top=False the model ends after the head (the layers before global pooling),
    pooled or not according to `pooling`, as in keras.applications.
    """
    k = keras_module(frontend)
    shape = check_input_shape(spec, input_shape)
    if include_top:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    resolved = resolve(spec, width, in_channels=shape[2])
    inputs = k.Input(shape=shape, name="image")
    x = inputs
    for r in resolved:
        if r.name.startswith("top"):
            break
        x = L.block(k, x, r.layer, r.filters, r.hidden, r.se_squeeze, r.name)

    if include_top:
        x = k.layers.GlobalAveragePooling2D(keepdims=bool(spec.top), name="pool")(x)
        for r in resolved:
            if r.name.startswith("top"):
                x = L.block(k, x, r.layer, r.filters, r.hidden, r.se_squeeze, r.name)
        if spec.top:
            x = k.layers.Flatten(name="flatten")(x)
        if dropout > 0:
            x = k.layers.Dropout(dropout, name="dropout")(x)
        x = k.layers.Dense(num_classes, activation=classifier_activation,
                           kernel_initializer=L.dense_init(k), name="classifier")(x)
    elif pooling == "avg":
        x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = k.layers.GlobalMaxPooling2D(name="pool")(x)
    model = k.Model(inputs, x, name=name or spec.name)
    # What it takes to rebuild this network elsewhere (the tf_keras twin for QAT, export).
    model._mhmodels_build_args = BuildArgs(spec, float(width), shape, num_classes, include_top,
                                           pooling, float(dropout), classifier_activation)
    return model


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

    def kwargs(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def build_args(model) -> BuildArgs | None:
    """How `model` was built, if `build_model` made it."""
    return getattr(model, "_mhmodels_build_args", None)
