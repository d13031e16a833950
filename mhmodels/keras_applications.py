"""keras.applications' MobileNet `.h5` files -> our networks (V1, V2, V3 Large / Small /
minimalistic).

Why: trained ImageNet weights for most of the zoo are published by implementations we match
layer for layer. Rather than copy their code, we read their files and put each tensor into the
layer of ours that computes the same thing, checking every shape, so a checkpoint is only ever
loaded into the network it was trained as:

- `checkpoint_spec` gives the exact architecture of a published network at a width, or raises
  `ArchitectureMismatch` saying why ours cannot express it (never a silent near-miss).
- `published_name` is the mapping table: our layer name -> the publisher's layer name.
- `load_keras_applications(model, path)` fills a built model from a keras.applications `.h5`
  (the legacy Keras 2 HDF5 weight files keras downloads), strictly: every layer of ours must get
  a tensor of the right shape, and every published tensor must be used (the classifier excepted
  for include_top=False).

keras.applications' MobileNetV3 puts its [-1, 1] rescaling inside the model
(`include_preprocessing`); its weights are the same either way, so the converted V3 takes
[-1, 1] like every other model of ours.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mhmodels.builder import build_model, resolve
from mhmodels.checkpoints import (OUR_LAYER, ArchitectureMismatch, CheckpointMismatch,
                                  fill_model, has_classifier, refuse_unused, weight_kind)
from mhmodels.registry import get_spec
from mhmodels.spec import ModelSpec, round8, scale_filters

# Zoo model -> the keras.applications code that publishes it (its layer-naming family).
KERAS_FAMILIES = {
    "mobilenet_v1": "keras_v1",
    "mobilenet_v2": "keras_v2",
    "mobilenet_v3_large": "keras_v3",
    "mobilenet_v3_large_min": "keras_v3",
    "mobilenet_v3_small": "keras_v3",
}
_KERAS_V3_STEM = 16  # keras.applications' MobileNetV3 never scales its stem


def checkpoint_spec(spec: ModelSpec, family: str, width: float,
                    input_shape: Sequence[int] | None = None) -> ModelSpec:
    """The spec whose build at `width` is exactly the publisher's network.

    keras_v3: keras.applications' MobileNetV3 keeps a 16-channel stem at every width, our
    builder scales it (SPEC section 5: Table 1's MAdds need it). The two agree at the published
    widths 0.75 and 1.0; below 1 we keep the stem unscaled; above 1 no spec of ours is that
    network, so we refuse. keras_v1: keras pads stride-2 layers by (0, 1), the same as 'same'
    padding only when every stride-2 layer sees an even size.
    """
    if family == "keras_v3":
        ours = scale_filters(spec.stem.filters, width, spec.width_rounding, spec.stem.shrink)
        if spec.stem.filters != _KERAS_V3_STEM:
            raise ArchitectureMismatch(f"{spec.name}: stem has {spec.stem.filters} filters, "
                                       f"keras.applications' MobileNetV3 has {_KERAS_V3_STEM}")
        if ours != _KERAS_V3_STEM:
            if width > 1:
                raise ArchitectureMismatch(
                    f"{spec.name} at width {width:g}: keras.applications' MobileNetV3 keeps its "
                    f"stem at {_KERAS_V3_STEM} channels at every width, our builder scales it to "
                    f"{ours} (SPEC section 5); above width 1 our specs cannot express the keras "
                    "network, so its weights are not loaded into a different one")
            spec = dataclasses.replace(spec, stem=dataclasses.replace(spec.stem, shrink=False))
        layers = {r.name: r for r in resolve(spec, width)}
        last = layers[f"block{len(spec.blocks) - 1}"].filters
        theirs, head = round8(6 * last), layers["head0"].filters
        if head != theirs:
            raise ArchitectureMismatch(
                f"{spec.name} at width {width:g}: keras.applications' MobileNetV3 makes its "
                f"last 1x1 conv 6x the last block's channels ({theirs}), our spec scales "
                f"{spec.head[0].filters} by the width ({head}); they agree at the published "
                "widths (0.75, 1.0) but not here, so the weights are not loaded")
    elif family == "keras_v1" and input_shape is not None:
        size = tuple(input_shape[:2])
        if any(s % 32 for s in size):
            raise ArchitectureMismatch(
                f"{spec.name} at input {size}: keras.applications' MobileNetV1 pads its stride-2 "
                "layers by (0, 1), which equals our 'same' padding only when height and width "
                "are multiples of 32; use such a size (published: 128, 160, 192, 224)")
    elif family not in ("keras_v2",):
        raise ValueError(f"unknown checkpoint family {family!r}")
    return spec


def published_name(family: str, ours: str) -> str:
    """keras.applications' layer name for our layer `ours` (a layer with weights)."""
    m = OUR_LAYER.match(ours)
    if not m:
        raise CheckpointMismatch(f"layer {ours!r} has no counterpart in {family} checkpoints")
    part, block, head, top, sub = m.groups()
    sub = sub or ""
    if family == "keras_v1":
        if part == "stem":
            return {"": "conv1", "bn": "conv1_bn"}[sub]
        if block is not None and sub in ("dw", "dw_bn", "pw", "pw_bn"):  # ds blocks
            kind, _, bn = sub.partition("_")
            return f"conv_{kind}_{int(block) + 1}" + ("_bn" if bn else "")
        if part == "classifier":
            return "conv_preds"
    elif family == "keras_v2":
        if part == "stem":
            return {"": "Conv1", "bn": "bn_Conv1"}[sub]
        if block is not None and sub in ("expand", "expand_bn", "dw", "dw_bn", "project",
                                         "project_bn"):
            kind, _, bn = sub.partition("_")
            kind = {"dw": "depthwise"}.get(kind, kind)
            prefix = "expanded_conv_" if block == "0" else f"block_{block}_"
            return prefix + kind + ("_BN" if bn else "")
        if head == "0":
            return {"": "Conv_1", "bn": "Conv_1_bn"}[sub]
        if part == "classifier":
            return "predictions"
    elif family == "keras_v3":
        if part == "stem":
            return {"": "Conv", "bn": "Conv/BatchNorm"}[sub]
        if block is not None:
            prefix = "expanded_conv/" if block == "0" else f"expanded_conv_{block}/"
            table = {"expand": "expand", "expand_bn": "expand/BatchNorm",
                     "dw": "depthwise", "dw_bn": "depthwise/BatchNorm",
                     "se_reduce": "squeeze_excite/Conv", "se_expand": "squeeze_excite/Conv_1",
                     "project": "project", "project_bn": "project/BatchNorm"}
            if sub in table:
                return prefix + table[sub]
        if head == "0":
            return {"": "Conv_1", "bn": "Conv_1/BatchNorm"}[sub]
        if top == "0" and not sub:
            return "Conv_2"
        if part == "classifier":
            return "Logits"
    raise CheckpointMismatch(f"layer {ours!r} has no counterpart in {family} checkpoints")


_CLASSIFIER = {"keras_v1": "conv_preds", "keras_v2": "predictions", "keras_v3": "Logits"}
_TOP_ONLY = {"keras_v1": ("conv_preds",), "keras_v2": ("predictions",),
             "keras_v3": ("Conv_2", "Logits")}

def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight kind: array}} of a Keras 2 HDF5 weight file (layers with weights)."""
    import h5py

    def text(value) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointMismatch(f"{path} is not a readable HDF5 file: {e}") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # a whole-model .h5 too
        if "layer_names" not in root.attrs:
            raise CheckpointMismatch(f"{path} is not a Keras 2 HDF5 weight file (no "
                                     "'layer_names'); Keras 3 '.weights.h5' files load with "
                                     "build(weights=<path>) directly")
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer in (text(n) for n in root.attrs["layer_names"]):
            group = root[layer]
            names = [text(n) for n in group.attrs.get("weight_names", [])]
            if names:
                out[layer] = {weight_kind(n): np.asarray(group[n]) for n in names}
    return out


def load_keras_applications(model, path: str | os.PathLike, family: str,
                            published: Mapping[str, Mapping[str, np.ndarray]] | None = None
                            ) -> None:
    """Fill `model` (built by mhmodels) from a keras.applications `.h5`; strict both ways."""
    published = read_keras_h5(path) if published is None else published
    used: set[str] = set()
    where = Path(path).name

    def lookup_for(layer):
        theirs = published_name(family, layer.name)
        if theirs not in published:
            hint = (" (a '_no_top' file has no classifier: build with include_top=False)"
                    if theirs in _TOP_ONLY[family] else "")
            raise CheckpointMismatch(f"{where} has no layer {theirs!r} for our layer "
                                     f"{layer.name!r}{hint}")
        used.add(theirs)
        tensors = published[theirs]

        def lookup(kind: str) -> tuple[str, np.ndarray]:
            if kind not in tensors:
                raise CheckpointMismatch(f"{where}: layer {theirs!r} has no {kind!r} for our "
                                         f"layer {layer.name!r} (it has {sorted(tensors)})")
            value = tensors[kind]
            if layer.name == "classifier" and kind == "kernel" and value.ndim == 4:
                value = value.reshape(value.shape[-2:])  # their 1x1 conv head is our Dense
            return f"{theirs}/{kind}", value
        return lookup

    fill_model(model, where, lookup_for)
    top_only = () if has_classifier(model) else _TOP_ONLY[family]
    refuse_unused(model, where, [n for n in set(published) - used if n not in top_only])

_STEMS = {"conv1": "keras_v1", "Conv1": "keras_v2", "Conv": "keras_v3"}
_FAMILY_NAMES = {"keras_v1": "MobileNetV1", "keras_v2": "MobileNetV2",
                 "keras_v3": "MobileNetV3"}


def check_family(published: Mapping[str, Mapping[str, np.ndarray]], family: str, model: str,
                 where: str) -> None:
    """Refuse a file of another keras.applications network (recognised by its stem's name)."""
    found = [f for stem, f in _STEMS.items() if stem in published]
    if found != [family]:
        what = (f"a keras.applications {_FAMILY_NAMES[found[0]]} file" if len(found) == 1
                else "not a keras.applications MobileNet file")
        raise CheckpointMismatch(f"{where} is {what}; {model!r} needs a "
                                 f"{_FAMILY_NAMES[family]} file")


def checkpoint_classes(published: Mapping[str, Mapping[str, np.ndarray]], family: str
                       ) -> int | None:
    """Class count of a file's classifier (None for a '_no_top' file)."""
    head = published.get(_CLASSIFIER[family])
    return None if head is None else int(head["bias"].shape[-1])


def from_keras_applications(path: str | os.PathLike, model: str, width: float, *,
                            input_shape: Sequence[int] = (224, 224, 3), include_top: bool = True,
                            **build_kwargs):
    """Our model holding the weights of a keras.applications `.h5` of zoo model `model`."""
    family = KERAS_FAMILIES.get(model)
    if family is None:
        raise ValueError(f"no keras.applications converter for {model!r}; known: "
                         f"{sorted(KERAS_FAMILIES)}")
    published = read_keras_h5(path)
    check_family(published, family, model, Path(path).name)
    classes = checkpoint_classes(published, family)
    if include_top and classes is None:
        raise CheckpointMismatch(f"{Path(path).name} has no classifier ('_no_top' file): "
                                 "use include_top=False")
    spec = checkpoint_spec(get_spec(model), family, width, input_shape)
    built = build_model(spec, width, input_shape=input_shape, include_top=include_top,
                        num_classes=classes or 1000, **build_kwargs)
    load_keras_applications(built, path, family, published)
    return built
