"""What both checkpoint converters share: the refusals, our layer-name grammar, and the strict
fill (every weight of ours set from a tensor of the same shape, every published tensor used).

Publishers name layers their own way; each converter (`mhmodels.keras_applications`,
`mhmodels.model_garden`) maps our names onto theirs and hands a lookup to `fill_model`, so the
shape checks and the error messages are written once.
"""
from __future__ import annotations

import re

from mhmodels.loading import WeightsMismatchError


class ArchitectureMismatch(ValueError):
    """The published network differs from what our builder would build (refused, not loaded)."""


class CheckpointMismatch(WeightsMismatchError):
    """A checkpoint file does not fit the model it is being loaded into."""


# Our layer names: stem, block<i>, head<i>, top<i>, classifier, each with an optional part
# suffix (bn, expand, dw, project, ...): the groups are (part, block, head, top, suffix).
OUR_LAYER = re.compile(r"^(stem|block(\d+)|head(\d+)|top(\d+)|classifier)(?:_(.+))?$")


def weight_kind(name: str) -> str:
    """'expanded_conv/depthwise/depthwise_kernel:0' -> 'kernel' (our layers' weight names)."""
    kind = name.split("/")[-1].split(":")[0]
    return {"depthwise_kernel": "kernel"}.get(kind, kind)


def fill_model(model, where: str, lookup_for) -> None:
    """Set every weight of every layer of `model` from `lookup_for(layer)(kind) -> (their
    name, array)`, refusing a tensor of another shape (the shape check of both converters)."""
    for layer in model.layers:
        if not layer.weights:
            continue
        lookup = lookup_for(layer)
        values = []
        for var in layer.weights:
            theirs, value = lookup(weight_kind(var.path if hasattr(var, "path") else var.name))
            if tuple(value.shape) != tuple(var.shape):
                raise CheckpointMismatch(
                    f"{where}: {theirs} has shape {tuple(value.shape)}, our {layer.name} needs "
                    f"{tuple(var.shape)}: the checkpoint is another width, class count or "
                    "architecture than the model built")
            values.append(value)
        layer.set_weights(values)

def has_classifier(model) -> bool:
    return any(layer.name == "classifier" for layer in model.layers)


def refuse_unused(model, where: str, unused) -> None:
    """Strict the other way: every published tensor has a place in our model."""
    unused = sorted(unused)
    if unused:
        raise CheckpointMismatch(f"{where} has tensors our {model.name!r} lacks: {unused[:8]}"
                                 f"{' ...' if len(unused) > 8 else ''}: a different architecture")
