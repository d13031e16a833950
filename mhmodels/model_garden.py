"""TF Model Garden (official.vision) MobileNet classifier checkpoints -> our networks
(Multi-AVG, Multi-MAX, MobileNet-EdgeTPU). Needs TensorFlow, not tf-models-official.

The Model Garden's checkpoints were trained on ImageNet mean / std input: their models get a
fixed 'input_normalization' layer mapping our [-1, 1] onto it
(`mhmodels.preprocessing.input_normalization`), so they take [-1, 1] like every other model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mhmodels.builder import build_args, build_model
from mhmodels.checkpoints import (OUR_LAYER, CheckpointMismatch, fill_model, has_classifier,
                                  refuse_unused)
from mhmodels.preprocessing import (IMAGENET_MEAN_RGB, IMAGENET_MEAN_STD, IMAGENET_STDDEV_RGB,
                                    input_normalization)
from mhmodels.registry import get_spec
from mhmodels.spec import ModelSpec

# Zoo model -> the Model Garden's MobileNet model_id with the same network.
MODEL_GARDEN_IDS = {"multi_avg": "MobileNetMultiAVG", "multi_max": "MobileNetMultiMAX",
                    "mobilenet_edgetpu": "MobileNetV3EdgeTPU"}
_MG_BACKBONE = "model/layer_with_weights-0/layer_with_weights-{}"
_MG_CLASSIFIER = "model/layer_with_weights-1"
_MG_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_MG_PARTS = {"": "_conv0", "bn": "_norm0", "expand": "_conv0", "expand_bn": "_norm0",
             "fused": "_conv0", "fused_bn": "_norm0", "dw": "_conv1", "dw_bn": "_norm1",
             "project": "_conv2", "project_bn": "_norm2"}


def model_garden_input(pixels):
    """Pixels in [0, 255] normalised the Model Garden way: what its checkpoints (and its
    TFLite files) take. Our converted models take [-1, 1] instead (see `from_model_garden`)."""
    x = np.asarray(pixels, dtype=np.float32)
    return (x - np.asarray(IMAGENET_MEAN_RGB, np.float32)) / np.asarray(
        IMAGENET_STDDEV_RGB, np.float32)


def model_garden_classes(path: str | os.PathLike) -> int | None:
    """Class count of a Model Garden checkpoint's classifier (None: no classifier)."""
    import tensorflow as tf

    try:
        shapes = tf.train.load_checkpoint(str(path)).get_variable_to_shape_map()
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise CheckpointMismatch(f"{path} is not a readable TF checkpoint: {e}") from None
    key = f"{_MG_CLASSIFIER}/bias{_MG_SUFFIX}"
    return int(shapes[key][0]) if key in shapes else None


def model_garden_name(spec: ModelSpec, ours: str) -> str:
    """The checkpoint key prefix of our layer `ours` in a Model Garden MobileNet classifier
    checkpoint (rooted at `model`, as its trainer writes them): the backbone's layers with
    weights are numbered stem, blocks, then the 1x1 convs before and after pooling."""
    m = OUR_LAYER.match(ours)
    if not m:
        raise CheckpointMismatch(f"layer {ours!r} has no counterpart in Model Garden checkpoints")
    part, block, head, top, sub = m.groups()
    sub = sub or ""
    if part == "classifier" and not sub:
        return _MG_CLASSIFIER
    if part == "stem":
        index = 0
    elif block is not None:
        index = 1 + int(block)
    elif head is not None:
        index = 1 + len(spec.blocks) + int(head)
    else:
        index = 1 + len(spec.blocks) + len(spec.head) + int(top)
    if sub not in _MG_PARTS or (block is None and sub not in ("", "bn")):
        raise CheckpointMismatch(f"layer {ours!r} has no counterpart in Model Garden checkpoints")
    return _MG_BACKBONE.format(index) + "/" + _MG_PARTS[sub]


def load_model_garden(model, path: str | os.PathLike) -> None:
    """Fill `model` (built by mhmodels) from a Model Garden TF2 checkpoint (prefix path);
    strict both ways, like `load_keras_applications`. Needs TensorFlow, not tf-models-official."""
    import tensorflow as tf

    spec = build_args(model).spec
    try:
        reader = tf.train.load_checkpoint(str(path))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise CheckpointMismatch(f"{path} is not a readable TF checkpoint: {e}") from None
    shapes = reader.get_variable_to_shape_map()
    wanted = {k for k in shapes if k.startswith("model/") and k.endswith(_MG_SUFFIX)}
    used: set[str] = set()
    where = Path(path).name

    def lookup_for(layer):
        prefix = model_garden_name(spec, layer.name)

        def lookup(kind: str) -> tuple[str, np.ndarray]:
            keys = [f"{prefix}/{k}{_MG_SUFFIX}" for k in (
                (kind, "depthwise_kernel") if kind == "kernel" else (kind,))]
            key = next((k for k in keys if k in shapes), None)
            if key is None:
                raise CheckpointMismatch(f"{where} has no {keys[0]!r} for our layer "
                                         f"{layer.name!r}: another architecture")
            used.add(key)
            return key, reader.get_tensor(key)
        return lookup

    fill_model(model, where, lookup_for)
    top = has_classifier(model)
    refuse_unused(model, where, [k for k in wanted - used
                                  if top or not k.startswith(_MG_CLASSIFIER + "/")])


def from_model_garden(path: str | os.PathLike, model: str, width: float, *,
                      input_shape: Sequence[int] = (224, 224, 3), include_top: bool = True,
                      num_classes: int | None = None, **build_kwargs):
    """Our model holding a Model Garden checkpoint's weights (prefix `path`; class count read
    from it). Like every mhmodels model it takes [-1, 1] input: the checkpoint's ImageNet
    mean / std normalisation is its first layer ('input_normalization')."""
    if model not in MODEL_GARDEN_IDS:
        raise ValueError(f"no Model Garden converter for {model!r}; known: "
                         f"{sorted(MODEL_GARDEN_IDS)}")
    if num_classes is None and include_top:
        num_classes = model_garden_classes(path)
        if num_classes is None:
            raise CheckpointMismatch(f"{path} has no classifier: use include_top=False")
    built = build_model(get_spec(model), width, input_shape=input_shape,
                        include_top=include_top, num_classes=num_classes or 1001,
                        input_normalization=input_normalization(IMAGENET_MEAN_STD),
                        **build_kwargs)
    load_model_garden(built, path)
    return built
