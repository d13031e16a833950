"""Published checkpoints -> our networks: the one place that maps a publisher's variables onto
mhmodels' layer names.

Why: trained ImageNet weights for most of the zoo are published by implementations we match
layer for layer (keras.applications' MobileNets). Rather than copy their code, we read their
files and put each tensor into the layer of ours that computes the same thing, checking every
shape, so a checkpoint is only ever loaded into the network it was trained as:

- `checkpoint_spec` gives the exact architecture of a published network at a width, or raises
  `ArchitectureMismatch` saying why ours cannot express it (never a silent near-miss).
- `published_name` is the mapping table: our layer name -> the publisher's layer name.
- `load_keras_applications(model, path)` fills a built model from a keras.applications `.h5`
  (the legacy Keras 2 HDF5 weight files keras downloads), strictly: every layer of ours must get
  a tensor of the right shape, and every published tensor must be used (the classifier excepted
  for include_top=False).
- `prepare(...)` / `Prepared.load(model)` is what `mhmodels.build(weights=...)` calls.

Input convention: every network of ours takes RGB in [-1, 1] (`mhmodels.preprocess_input`).
keras.applications' MobileNetV3 puts that rescaling inside the model (`include_preprocessing`);
its weights are the same either way, so the converted V3 takes [-1, 1] like every other model.
The Model Garden's checkpoints were trained on ImageNet mean / std input: their models get a
fixed 'input_normalization' layer mapping [-1, 1] onto it (`Prepared.input_normalization`,
`mhmodels.preprocessing.input_normalization`), so they take [-1, 1] as well.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mhmodels.loading import WeightsMismatchError
from mhmodels.spec import ModelSpec, scale_filters

__all__ = ["ArchitectureMismatch", "CheckpointMismatch", "KERAS_FAMILIES", "checkpoint_spec",
           "published_name", "read_keras_h5", "load_keras_applications",
           "from_keras_applications", "Prepared", "prepare"]

logger = logging.getLogger(__name__)

# Zoo model -> the keras.applications code that publishes it (its layer-naming family).
KERAS_FAMILIES = {
    "mobilenet_v1": "keras_v1",
    "mobilenet_v2": "keras_v2",
    "mobilenet_v3_large": "keras_v3",
    "mobilenet_v3_large_min": "keras_v3",
    "mobilenet_v3_small": "keras_v3",
}
_KERAS_V3_STEM = 16  # keras.applications' MobileNetV3 never scales its stem


class ArchitectureMismatch(ValueError):
    """The published network differs from what our builder would build (refused, not loaded)."""


class CheckpointMismatch(WeightsMismatchError):
    """A checkpoint file does not fit the model it is being loaded into."""


# --------------------------------------------------------------------------------------------
# Exact architecture of a published network
# --------------------------------------------------------------------------------------------


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
        from mhmodels.builder import resolve

        layers = {r.name: r for r in resolve(spec, width)}
        last = layers[f"block{len(spec.blocks) - 1}"].filters
        theirs, head = _make_divisible(6 * last), layers["head0"].filters
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


def _make_divisible(value: float, divisor: int = 8) -> int:
    """keras.applications' channel rounding (the same rule as our round8)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --------------------------------------------------------------------------------------------
# The mapping: our layer names -> the publisher's
# --------------------------------------------------------------------------------------------

_OURS = re.compile(r"^(stem|block(\d+)|head(\d+)|top(\d+)|classifier)(?:_(.+))?$")


def published_name(family: str, ours: str) -> str:
    """keras.applications' layer name for our layer `ours` (a layer with weights)."""
    m = _OURS.match(ours)
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


def _weight_kind(name: str) -> str:
    """'expanded_conv/depthwise/depthwise_kernel:0' -> 'kernel' (our layers' weight names)."""
    kind = name.split("/")[-1].split(":")[0]
    return {"depthwise_kernel": "kernel"}.get(kind, kind)


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
                out[layer] = {_weight_kind(n): np.asarray(group[n]) for n in names}
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

    _fill_model(model, where, lookup_for)
    top_only = () if _has_classifier(model) else _TOP_ONLY[family]
    _refuse_unused(model, where, [n for n in set(published) - used if n not in top_only])


def _fill_model(model, where: str, lookup_for) -> None:
    """Set every weight of every layer of `model` from `lookup_for(layer)(kind) -> (their
    name, array)`, refusing a tensor of another shape (the shape check of both converters)."""
    for layer in model.layers:
        if not layer.weights:
            continue
        lookup = lookup_for(layer)
        values = []
        for var in layer.weights:
            theirs, value = lookup(_weight_kind(var.path if hasattr(var, "path") else var.name))
            if tuple(value.shape) != tuple(var.shape):
                raise CheckpointMismatch(
                    f"{where}: {theirs} has shape {tuple(value.shape)}, our {layer.name} needs "
                    f"{tuple(var.shape)}: the checkpoint is another width, class count or "
                    "architecture than the model built")
            values.append(value)
        layer.set_weights(values)


def _has_classifier(model) -> bool:
    return any(layer.name == "classifier" for layer in model.layers)


def _refuse_unused(model, where: str, unused) -> None:
    """Strict the other way: every published tensor has a place in our model."""
    unused = sorted(unused)
    if unused:
        raise CheckpointMismatch(f"{where} has tensors our {model.name!r} lacks: {unused[:8]}"
                                 f"{' ...' if len(unused) > 8 else ''}: a different architecture")


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
    from mhmodels.builder import build_model
    from mhmodels.registry import get_spec

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


# --------------------------------------------------------------------------------------------
# What build(weights=...) does
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A resolved `weights=` argument: the file, its format and the network it needs."""

    path: Path  # a TF checkpoint: its prefix
    format: str  # 'keras' (our .weights.h5) | 'keras_h5' (keras.applications) | 'tf_checkpoint'
    spec: ModelSpec
    num_classes: int
    family: str | None = None
    # build_model(input_normalization=...): the checkpoint's input from our [-1, 1] (or None)
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def load(self, model, build_full=None) -> None:
        """Put the weights into `model` (built from `self.spec` with `self.num_classes` and
        `self.input_normalization`)."""
        if self.format == "keras_h5":
            load_keras_applications(model, self.path, self.family)
            return
        if self.format == "tf_checkpoint":
            load_model_garden(model, self.path)
            return
        # mhmodels.loading says which checkpoint does not fit and why (WeightsMismatchError).
        from mhmodels.loading import load_weights
        if any(layer.name == "classifier" for layer in model.layers):
            load_weights(model, self.path)
        else:  # our checkpoints hold the whole network: load it, keep the feature layers
            full = build_full()
            load_weights(full, self.path)
            for layer in model.layers:
                layer.set_weights(full.get_layer(layer.name).get_weights())


def prepare(spec: ModelSpec, width: float, weights, *, input_shape: Sequence[int],
            include_top: bool, num_classes: int | None) -> Prepared:
    """Resolve `weights` (None excluded) to a file and the exact network it needs.

    A dataset name ('imagenet') picks the published checkpoint for (model, width, input size);
    its class layout (1000 for keras.applications) becomes the default `num_classes`, and a
    different explicit one is an error while include_top=True.
    """
    from mhmodels import weights as weights_lib
    from mhmodels.preprocessing import IMAGENET_MEAN_STD, input_normalization

    def check_head(classes: int | None) -> None:
        if include_top and num_classes is not None and classes and num_classes != classes:
            raise ValueError(
                f"weights={weights!r} has a {classes}-class head; use num_classes={classes} "
                "(or leave it out), or include_top=False to reuse the features with your own "
                "classifier")

    if (weights == "imagenet" and include_top and num_classes is not None
            and num_classes not in (1000, 1001)):  # no checkpoint fits: say so before downloading
        raise ValueError(
            f"weights='imagenet' has an ImageNet head (1000 classes for keras.applications "
            f"files, 1001 with background for ours / the Model Garden's), not {num_classes}; "
            "leave num_classes out, or use include_top=False to reuse the features with your "
            "own classifier")
    resolved = weights_lib.resolve(spec.name, width, weights, resolution=int(input_shape[0]))
    path, ckpt = resolved.path, resolved.checkpoint
    fmt = ckpt.format if ckpt is not None else _sniff_format(path)
    if fmt == "keras_h5":
        family = KERAS_FAMILIES.get(spec.name)
        if family is None:
            raise CheckpointMismatch(f"{path.name} is a keras.applications file; "
                                     f"{spec.name!r} has no keras.applications counterpart")
        published = read_keras_h5(path)
        check_family(published, family, spec.name, path.name)
        classes = ckpt.classes if ckpt is not None and ckpt.classes else checkpoint_classes(
            published, family)
        if include_top and checkpoint_classes(published, family) is None:
            raise CheckpointMismatch(f"{path.name} has no classifier ('_no_top' file): use "
                                     "include_top=False")
        check_head(classes)
        exact = checkpoint_spec(spec, family, width, input_shape)
        return Prepared(path, fmt, exact, num_classes or classes or 1000, family)
    if fmt == "tf_checkpoint":
        if spec.name not in MODEL_GARDEN_IDS:
            raise CheckpointMismatch(f"{path.name} is a TF (Model Garden) checkpoint; "
                                     f"{spec.name!r} has no Model Garden converter (known: "
                                     f"{sorted(MODEL_GARDEN_IDS)})")
        prefix = path.with_name(path.name[: -len(".index")])
        classes = model_garden_classes(prefix)
        if include_top and classes is None:
            raise CheckpointMismatch(f"{path.name} has no classifier: use include_top=False")
        check_head(classes)
        convention = ckpt.input if ckpt is not None else IMAGENET_MEAN_STD
        return Prepared(prefix, fmt, spec, num_classes or classes or 1001, "model_garden",
                        input_normalization(convention))
    classes = ckpt.classes if ckpt is not None else None
    check_head(classes)
    return Prepared(path, "keras", spec, num_classes or classes or 1001)


def _sniff_format(path: Path) -> str:
    """A local/URL file: our Keras 3 `.weights.h5`, a Keras 2 (keras.applications) `.h5`, or
    the `.index` file of a TF (Model Garden) checkpoint."""
    if path.suffix == ".index":
        return "tf_checkpoint"
    if path.name.endswith(".weights.h5") or path.suffix != ".h5":
        return "keras"
    try:
        import h5py

        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            return "keras_h5" if "layer_names" in root.attrs else "keras"
    except OSError:
        return "keras"


# --------------------------------------------------------------------------------------------
# Ready-made TFLite files
# --------------------------------------------------------------------------------------------

CALIBRATION_CROPS_PER_PHOTO = 64


def default_calibration_images(size: int):
    """The int8 calibration set used when none is given: 128 square crops (random 40-100% of
    the short side, seed 0) of scikit-learn's two sample photos, in [-1, 1]. Not ImageNet:
    it ships with scikit-learn, so exports are reproducible offline; calibrating on a few
    hundred ImageNet training images instead may give int8 accuracy closer to float."""
    from mhmodels.images import sample_photos

    return sample_photos(size=size, crops_per_image=CALIBRATION_CROPS_PER_PHOTO)


def pretrained_tflite(model: str, width: float = 1.0, quantization: str = "float", *,
                      resolution: int | None = None, representative_data=None,
                      progress: bool = True) -> Path:
    """A `.tflite` of a zoo model with ImageNet weights: the published file when the manifest
    lists one for (model, width, quantization), else exported once from the converted weights
    and cached in `$MHMODELS_HOME/tflite/` (int8 / uint8 calibrated on
    `representative_data`, default `default_calibration_images`)."""
    from mhmodels import weights as weights_lib

    try:
        return weights_lib.download_tflite(model, width, quantization, resolution=resolution,
                                           progress=progress)
    except ValueError as published_error:
        if quantization not in weights_lib.QUANTIZATIONS:
            raise
        try:
            ckpt = weights_lib.find_checkpoint(model, width, weights_lib.LOADABLE_FORMATS,
                                               resolution=resolution)
        except ValueError:
            raise published_error from None
    size = resolution or ckpt.resolution or 224
    calibrated = quantization in ("int8", "uint8")
    tag = "" if not calibrated or representative_data is None else "-custom-calibration"
    target = (weights_lib.cache_dir() / "tflite"
              / f"{model}-w{width:g}-r{size}-imagenet-{quantization}{tag}.tflite")
    if target.is_file() and representative_data is None:
        logger.info("using cached %s", target)
        return target
    from mhmodels.export import export_tflite
    from mhmodels.registry import build

    built = build(model, width, input_shape=(size, size, 3), weights="imagenet")
    data = None
    if calibrated:
        data = representative_data if representative_data is not None else (
            default_calibration_images(size))
    target.parent.mkdir(parents=True, exist_ok=True)
    export_tflite(built, target, quantization, representative_data=data)
    return target


def load_weights(model, weights, *, skip_mismatched_head: bool = False) -> None:
    """Load `weights` (a dataset name such as 'imagenet', a path or a URL) into a model that
    `mhmodels.build` made, e.g. for `python -m mhmodels.train --init_weights=imagenet`.

    With `skip_mismatched_head`, a checkpoint whose classifier has another class count fills
    every layer but the classifier (fine-tuning on your own classes); otherwise that is an error.
    A 1001-class ImageNet checkpoint (background first) fills a 1000-class model's classifier
    too, without the background class (evaluating it on TFDS imagenet2012's 1000 labels).
    """
    from mhmodels.builder import build_args, build_model

    args = build_args(model)
    if args is None:
        raise ValueError("load_weights needs a model built by mhmodels.build / build_model")
    prepared = prepare(args.spec, args.width, weights, input_shape=args.input_shape,
                       include_top=False, num_classes=None)
    if prepared.spec != args.spec or prepared.input_normalization != args.input_normalization:
        raise ArchitectureMismatch(
            f"{weights!r} needs the publisher's exact network for {args.spec.name} at width "
            f"{args.width:g} (and its input normalisation), which differs from the model "
            f"given; build it with mhmodels.build({args.spec.name!r}, {args.width:g}, "
            f"weights={weights!r}), or pretrained.build_pretrained(...) for another class count")
    frontend = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"

    def build_full(num_classes: int = prepared.num_classes):
        return build_model(args.spec, args.width, input_shape=args.input_shape,
                           num_classes=num_classes, frontend=frontend,
                           input_normalization=args.input_normalization)

    head_fits = not args.include_top or args.num_classes == prepared.num_classes
    if head_fits:
        prepared.load(model, build_full)
        return
    # ImageNet with background (ours, the Model Garden's) into the 1000 classes of
    # keras.applications / TFDS imagenet2012: the same classifier without its class 0.
    drop_background = (prepared.num_classes, args.num_classes) == (1001, 1000)
    if not skip_mismatched_head and not drop_background:
        raise CheckpointMismatch(f"{weights!r} has a {prepared.num_classes}-class classifier, "
                                 f"the model {args.num_classes}; pass skip_mismatched_head=True "
                                 "to load everything else")
    full = build_full()
    prepared.load(full, build_full)
    for layer in model.layers:
        if layer.weights and layer.name != "classifier":
            layer.set_weights(full.get_layer(layer.name).get_weights())
    if drop_background:
        kernel, bias = full.get_layer("classifier").get_weights()
        model.get_layer("classifier").set_weights([kernel[:, 1:], bias[1:]])


def build_pretrained(spec: ModelSpec, width: float, weights, *, input_shape: Sequence[int],
                     num_classes: int, skip_mismatched_head: bool = False, **build_kwargs):
    """The publisher's exact network for `weights` (its spec and input normalisation) with a
    `num_classes` classifier, filled by `load_weights`: what `python -m mhmodels.train
    --init_weights=imagenet` evaluates or fine-tunes (a new class count keeps the body)."""
    from mhmodels.builder import build_model

    prepared = prepare(spec, width, weights, input_shape=input_shape, include_top=False,
                       num_classes=None)
    model = build_model(prepared.spec, width, input_shape=input_shape, num_classes=num_classes,
                        input_normalization=prepared.input_normalization, **build_kwargs)
    load_weights(model, weights, skip_mismatched_head=skip_mismatched_head)
    return model


# --------------------------------------------------------------------------------------------
# Multi-scale features (detection / segmentation backbones)
# --------------------------------------------------------------------------------------------


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
    backbone. `model` is any mhmodels model (either front-end, pretrained or not)."""
    import importlib

    from mhmodels.builder import build_args

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
    k = importlib.import_module(type(model).__module__.split(".", 1)[0])
    outputs = [by_prefix[ends[s]] for s in strides]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return k.Model(inputs, outputs, name=name or f"{model.name}_features")


# --------------------------------------------------------------------------------------------
# TF Model Garden (official.vision) MobileNet classifiers: TF2 checkpoints
# --------------------------------------------------------------------------------------------

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
    from mhmodels.preprocessing import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB

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
    m = _OURS.match(ours)
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

    from mhmodels.builder import build_args

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

    _fill_model(model, where, lookup_for)
    top = _has_classifier(model)
    _refuse_unused(model, where, [k for k in wanted - used
                                  if top or not k.startswith(_MG_CLASSIFIER + "/")])


def from_model_garden(path: str | os.PathLike, model: str, width: float, *,
                      input_shape: Sequence[int] = (224, 224, 3), include_top: bool = True,
                      num_classes: int | None = None, **build_kwargs):
    """Our model holding a Model Garden checkpoint's weights (prefix `path`; class count read
    from it). Like every mhmodels model it takes [-1, 1] input: the checkpoint's ImageNet
    mean / std normalisation is its first layer ('input_normalization')."""
    from mhmodels.builder import build_model
    from mhmodels.preprocessing import IMAGENET_MEAN_STD, input_normalization
    from mhmodels.registry import get_spec

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
