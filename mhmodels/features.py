"""Multi-scale feature maps (detection / segmentation backbones), keras / timm style.

`mhmodels.build(name, features_only=True)` returns a model whose outputs are the feature maps
at output strides 4, 8, 16 and 32 (timm's `features_only=True, out_indices=(1, 2, 3, 4)`;
the Model Garden's endpoints): the output of the last block at each stride, the tensors the
classifier itself computes. `feature_extractor(model)` does the same for a model already
built (pretrained or not, either front-end); the layers and weights are shared, not copied.
"""
from __future__ import annotations

from typing import Sequence

from mhmodels.builder import build_args, frontend_of, keras_module
from mhmodels.spec import ModelSpec

DEFAULT_OUT_INDICES = (1, 2, 3, 4)  # strides 4, 8, 16, 32 in a network whose stem has stride 2


def endpoint_blocks(spec: ModelSpec) -> dict[int, str]:
    """{output stride: layer-name prefix of the last block at that stride} ('stem' or
    'block<i>', i the spec block index): where timm's features_only / the Model Garden's
    endpoints take their feature maps."""
    stride = spec.stem.stride
    ends = {stride: "stem"}
    for i, block in enumerate(spec.blocks):
        stride *= block.stride
        ends[stride] = f"block{i}"
    return ends


def feature_extractor(model, strides: Sequence[int] = (4, 8, 16, 32), *,
                      name: str | None = None):
    """A model (same layers, same weights) from `model`'s input to its feature maps at the
    given output strides, in that order: e.g. the stride 4/8/16/32 endpoints of an SSD / FPN
    backbone.

    Args:
      model: a model `mhmodels.build` made (either front-end, pretrained or not, with or
        without its top).
      strides: output strides of the maps, each one of `feature_strides(spec)`.
      name: the new model's name; default `<model name>_features`.
    Returns:
      A functional model of the same front-end whose outputs are the list of maps.
    Raises:
      ValueError: `model` was not built by mhmodels, or a stride the network lacks.
    """
    args = build_args(model)
    if args is None:
        raise ValueError("feature_extractor needs a model built by mhmodels.build / build_model")
    ends = endpoint_blocks(args.spec)
    unknown = [s for s in strides if s not in ends]
    if unknown or not strides:
        raise ValueError(f"{args.spec.name} has feature maps at strides {sorted(ends)}, not "
                         f"{unknown or list(strides)}")
    by_prefix: dict[str, object] = {}
    for layer in model.layers:  # topological order: a block's last layer is its output
        prefix = layer.name.split("_", 1)[0]
        if prefix in ends.values():
            by_prefix[prefix] = layer.output
    k = keras_module(frontend_of(model))
    outputs = [by_prefix[ends[s]] for s in strides]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return k.Model(inputs, outputs, name=name or f"{model.name}_features")


def feature_strides(spec: ModelSpec) -> list[int]:
    """The output strides a feature map can be taken at, shallowest first (level i of
    `out_indices` is the i-th): [2, 4, 8, 16, 32] for every MobileNet of the zoo."""
    return sorted(endpoint_blocks(spec))


def strides_of(spec: ModelSpec, out_indices: Sequence[int]) -> tuple[int, ...]:
    """The strides of the feature levels `out_indices` (timm's indices; negative from the end).

    Raises:
      ValueError: an index out of range, a repeated one, or none.
    """
    levels = feature_strides(spec)
    indices = tuple(out_indices)
    if (not indices or any(isinstance(i, bool) or not isinstance(i, int) for i in indices)
            or any(not -len(levels) <= i < len(levels) for i in indices)
            or len({i % len(levels) for i in indices}) != len(indices)):
        raise ValueError(f"out_indices must be distinct integers in [0, {len(levels) - 1}] "
                         f"(levels at strides {levels} of {spec.name!r}), got {out_indices!r}")
    return tuple(levels[i] for i in indices)
