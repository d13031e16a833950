"""`weights=` -> a model holding them: the one loading path of published and our own
checkpoints, used by `mhmodels.build(weights=...)` and by training (`--init_weights`).

- `prepare(...)` resolves a `weights=` argument (a dataset name such as 'imagenet', a path or
  a URL) to a file, its format and the exact network it needs; `Prepared.load(model)` fills a
  model built from that network.
- `load_weights(model, weights)` / `build_pretrained(...)`: the same into a model that already
  exists, or with another class count (fine-tuning keeps the body).

The converters live one per publisher: `mhmodels.keras_applications` (keras.applications
`.h5` files) and `mhmodels.model_garden` (TF Model Garden checkpoints); their public names are
re-exported here. Input convention: every network of ours takes RGB in [-1, 1]
(`mhmodels.preprocess_input`); a checkpoint trained on other input gets a fixed
'input_normalization' first layer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from mhmodels import weights as weights_lib
from mhmodels.builder import build_args, build_model, frontend_of
from mhmodels.checkpoints import ArchitectureMismatch, CheckpointMismatch
from mhmodels.keras_applications import (KERAS_FAMILIES, check_family, checkpoint_classes,
                                         checkpoint_spec, from_keras_applications,
                                         load_keras_applications, published_name, read_keras_h5)
from mhmodels.loading import load_weights as load_weights_file
from mhmodels.model_garden import (MODEL_GARDEN_IDS, from_model_garden, load_model_garden,
                                   model_garden_classes, model_garden_input)
from mhmodels.preprocessing import IMAGENET_MEAN_STD, input_normalization
from mhmodels.spec import ModelSpec

__all__ = ["ArchitectureMismatch", "CheckpointMismatch", "KERAS_FAMILIES", "MODEL_GARDEN_IDS",
           "checkpoint_spec", "published_name", "read_keras_h5", "load_keras_applications",
           "from_keras_applications", "load_model_garden", "from_model_garden",
           "model_garden_input", "Prepared", "prepare", "load_weights", "build_pretrained"]


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
        if any(layer.name == "classifier" for layer in model.layers):
            load_weights_file(model, self.path)
        else:  # our checkpoints hold the whole network: load it, keep the feature layers
            full = build_full()
            load_weights_file(full, self.path)
            for layer in model.layers:
                layer.set_weights(full.get_layer(layer.name).get_weights())


def prepare(spec: ModelSpec, width: float, weights, *, input_shape: Sequence[int],
            include_top: bool, num_classes: int | None) -> Prepared:
    """Resolve `weights` (None excluded) to a file and the exact network it needs.

    A dataset name ('imagenet') picks the published checkpoint for (model, width, input size);
    its class layout (1000 for keras.applications) becomes the default `num_classes`, and a
    different explicit one is an error while include_top=True.
    """
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


def load_weights(model, weights, *, skip_mismatched_head: bool = False) -> None:
    """Load `weights` (a dataset name such as 'imagenet', a path or a URL) into a model that
    `mhmodels.build` made, e.g. for `python -m mhmodels.train --init_weights=imagenet`.

    With `skip_mismatched_head`, a checkpoint whose classifier has another class count fills
    every layer but the classifier (fine-tuning on your own classes); otherwise that is an error.
    A 1001-class ImageNet checkpoint (background first) fills a 1000-class model's classifier
    too, without the background class (evaluating it on TFDS imagenet2012's 1000 labels).
    """
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
    frontend = frontend_of(model)

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
    prepared = prepare(spec, width, weights, input_shape=input_shape, include_top=False,
                       num_classes=None)
    model = build_model(prepared.spec, width, input_shape=input_shape, num_classes=num_classes,
                        input_normalization=prepared.input_normalization, **build_kwargs)
    load_weights(model, weights, skip_mismatched_head=skip_mismatched_head)
    return model
