"""Names -> specs: the built-in zoo, entries the search emitted, and the user's own.

Entries are JSON files named `<name>.json` (a spec plus optional `provenance`) found in
  1. the built-in zoo (`zoo/models/` of the checkout, `mhmodels/zoo/models/` when installed),
  2. the user's zoo `$MHMODELS_HOME/zoo/models/` (where searches write by default),
  3. every directory listed in `$MHMODELS_ZOO_PATH` (os.pathsep-separated),
  4. specs registered in this process with `register()`.
A name defined twice is an error naming both places, never a silent override. A bad file
(malformed JSON, a wrong name, a duplicate) fails only the name it defines, with a warning;
hidden files and anything but regular files are not entries; a directory is scanned once.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mhmodels.builder import build_model
from mhmodels.spec import ModelSpec, SpecError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
ZOO_PATH_ENV = "MHMODELS_ZOO_PATH"


@dataclass(frozen=True)
class ZooEntry:
    spec: ModelSpec
    source: str  # file path or "<registered>"
    provenance: Mapping[str, Any] = field(default_factory=dict)


_registered: dict[str, ZooEntry] = {}


def builtin_zoo_dir() -> Path:
    """The shipped zoo: inside the installed package, else the checkout's top-level zoo/."""
    package_dir = Path(os.path.abspath(__file__)).parent  # no resolve(): Bazel runfiles
    for candidate in (package_dir / "zoo", package_dir.parent / "zoo"):
        if (candidate / "models").is_dir():
            return candidate
    raise FileNotFoundError(f"mhmodels' zoo directory is missing (looked in {package_dir / 'zoo'}"
                            f" and {package_dir.parent / 'zoo'}): the installation is broken")


def zoo_dirs() -> list[Path]:
    """The directories scanned for entries, each once: built-in, the user's, $MHMODELS_ZOO_PATH."""
    from mhmodels.files import user_zoo_dir
    candidates = [builtin_zoo_dir() / "models", user_zoo_dir()]
    candidates += [Path(item) for item in os.environ.get(ZOO_PATH_ENV, "").split(os.pathsep)
                   if item]
    dirs, seen = [], set()
    for directory in candidates:
        key = os.path.realpath(directory)
        if key not in seen:
            seen.add(key)
            dirs.append(directory)
    return dirs


def read_entry(path: Path) -> ZooEntry:
    """Parse and validate one zoo entry file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"zoo entry {path}: not valid JSON: {err}") from None
    except OSError as err:
        raise SpecError(f"zoo entry {path}: cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"zoo entry {path}: expected a JSON object")
    provenance = data.pop("provenance", {})
    spec = ModelSpec.from_dict(data, source=f"zoo entry {path}")
    if spec.name != Path(path).stem:
        raise SpecError(f"zoo entry {path}: its name {spec.name!r} does not match the file name "
                        f"(expected {Path(path).stem}.json)")
    return ZooEntry(spec, str(path), provenance)


def _entry_files(directory: Path) -> list[Path]:
    """`*.json` regular files of a zoo dir; hidden files (editor backups, locks, our own
    temporary files) and anything that is not a regular file are not entries."""
    return sorted(p for p in directory.glob("*.json")
                  if not p.name.startswith(".") and p.is_file())


_warned: set[str] = set()


def _scan() -> tuple[dict[str, ZooEntry], dict[str, SpecError]]:
    """(good entries, name -> error of a bad or doubly defined entry). A bad file fails only
    the name it defines (its file stem), so one broken entry never breaks every build."""
    found: dict[str, ZooEntry] = {}
    bad: dict[str, SpecError] = {}
    user_dir = os.path.realpath(zoo_dirs()[1])
    for directory in zoo_dirs():
        if not directory.is_dir():
            if os.path.realpath(directory) != user_dir:  # the user zoo appears on first use
                bad[f"<dir {directory}>"] = SpecError(
                    f"zoo directory {directory} (from ${ZOO_PATH_ENV}) does not exist")
            continue
        for path in _entry_files(directory):
            try:
                entry = read_entry(path)
            except SpecError as err:
                bad[path.stem] = err
                continue
            _add(found, bad, entry)
    for entry in _registered.values():
        _add(found, bad, entry)
    for name in bad:
        found.pop(name, None)
    new = [str(err) for err in bad.values() if str(err) not in _warned]
    if new:
        _warned.update(new)
        warnings.warn("skipped zoo entries: " + "; ".join(new), stacklevel=3)
    return found, bad


def entries() -> dict[str, ZooEntry]:
    """Every valid entry by name (bad ones are skipped with a warning)."""
    return _scan()[0]


def _add(found: dict[str, ZooEntry], bad: dict[str, SpecError], entry: ZooEntry) -> None:
    name = entry.spec.name
    if name in found:
        bad[name] = SpecError(f"model {name!r} is defined twice: {found[name].source} and "
                              f"{entry.source}")
    found.setdefault(name, entry)


def list_models() -> list[str]:
    """Every buildable name: built-in, emitted by the search, or registered.

    Returns:
      The sorted names.
    Raises:
      FileNotFoundError: a directory of $MHMODELS_ZOO_PATH does not exist.
      SpecError: a malformed entry, or a name defined twice.
    """
    return sorted(entries())


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called `name`: its spec, where it was found and its provenance.

    Args:
      name: a model name (see `list_models()`).
    Returns:
      The `ZooEntry`.
    Raises:
      TypeError: `name` is not a string.
      ValueError: an unknown name (the message suggests close names and lists all).
      SpecError: a malformed entry in the zoo.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    all_entries, bad = _scan()
    if name in bad:
        raise bad[name]
    if name not in all_entries:
        close = difflib.get_close_matches(name.lower(), list(all_entries), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known models: "
                         f"{', '.join(sorted(all_entries))}")
    return all_entries[name]


def get_spec(name: str) -> ModelSpec:
    """The architecture of a zoo model, at width 1.0.

    Args:
      name: a model name (see `list_models()`).
    Returns:
      Its `ModelSpec`.
    Raises:
      ValueError: an unknown name (with close-name suggestions); see `get_entry`.
    """
    return get_entry(name).spec


def register(spec: ModelSpec, provenance: Mapping[str, Any] | None = None) -> None:
    """Make `spec` buildable by name in this process (nothing is written to disk).

    Args:
      spec: the architecture; `spec.name` becomes its zoo name.
      provenance: optional metadata kept with the entry.
    Raises:
      SpecError: an invalid spec, a bad name, or a name that already exists.
    """
    spec.validate()
    if not NAME_PATTERN.match(spec.name):
        raise SpecError(f"model name {spec.name!r} must match {NAME_PATTERN.pattern}")
    if spec.name in entries():
        raise SpecError(f"model {spec.name!r} already exists; pick another name")
    _registered[spec.name] = ZooEntry(spec, "<registered>", dict(provenance or {}))


def unregister(name: str) -> None:
    """Forget a spec registered with `register` (no-op for other or unknown names).

    Args:
      name: the registered name.
    Raises:
      Nothing: zoo files are never removed.
    """
    _registered.pop(name, None)


def build(spec_or_name: str | ModelSpec, /, width: float = 1.0, *,
          input_shape: Sequence[int | None] | None = None, num_classes: int | None = None,
          classes: int | None = None, include_top: bool = True, pooling: str | None = None,
          dropout: float = 0.2, classifier_activation: str | None = None,
          weights: str | os.PathLike | None = None, input_tensor=None, name: str | None = None,
          frontend: str = "keras"):
    """Build a zoo model (or a `ModelSpec`) as a Keras model, following keras.applications.

    Inputs are RGB images scaled to [-1, 1] (`mhmodels.preprocess_input` maps [0, 255]
    pixels there), channels_last (NHWC); a global `channels_first` setting is refused.

    Args:
      spec_or_name: a zoo name (`list_models()`) or a `ModelSpec` (positional).
      width: width multiplier (1.0 = the published network).
      input_shape: (height, width, 3); default (224, 224, 3), or the shape of
        `input_tensor`. (None, None, 3) for fully convolutional use needs include_top=False.
      num_classes: classifier outputs, default 1001 (ImageNet with background); `classes`
        is the keras.applications alias.
      include_top: end with pooling, dropout and the classifier; else the feature map
        before global pooling, pooled per `pooling` (None, 'avg' or 'max').
      dropout: rate of the dropout before the classifier.
      classifier_activation: None gives logits (float32 even under mixed precision).
      weights: None (random), 'imagenet', a local `.weights.h5` / keras.applications `.h5` /
        Model Garden checkpoint `.index` path or a URL; 'imagenet' takes the class layout and
        exact network of the published checkpoint, or refuses with the reason (see
        `mhmodels.pretrained`). A checkpoint trained on another input than [-1, 1] gets a
        fixed 'input_normalization' first layer, so the model still takes [-1, 1].
      input_tensor: build on this tensor (e.g. another model's output) instead of a new Input.
      name: the Keras model's name; default `<spec name>_<width>_<size>`, e.g.
        'multi_max_1.00_224' (two widths of one network can then share a Keras graph).
      frontend: 'keras' (Keras 3) or 'tf_keras' (the Keras 2 twin used for QAT).

    Returns:
      A `keras.Model` (tf_keras with frontend='tf_keras').
    Raises:
      ValueError: an unknown model (with close-name suggestions), or bad arguments (width,
        input shape, classes, pooling, dropout, data format; the message names the problem).
      SpecError: a malformed zoo entry.
    """
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ValueError(f"num_classes={num_classes} and classes={classes} disagree; pass one")
    num_classes = num_classes if num_classes is not None else classes
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else get_spec(spec_or_name)
    loader = None
    if weights is not None:  # the checkpoint decides the class layout and exact network
        from mhmodels import pretrained
        shape = tuple(input_shape) if input_shape is not None else (
            tuple(input_tensor.shape[1:]) if input_tensor is not None else (224, 224, 3))
        shape = tuple(224 if d is None else int(d) for d in shape[:2]) + (3,)
        loader = pretrained.prepare(spec, width, weights, input_shape=shape,
                                    include_top=include_top, num_classes=num_classes)
        spec, num_classes = loader.spec, loader.num_classes
    num_classes = 1001 if num_classes is None else num_classes
    normalization = loader.input_normalization if loader is not None else None
    model = build_model(spec, width, input_shape=input_shape, num_classes=num_classes,
                        include_top=include_top, pooling=pooling, dropout=dropout,
                        classifier_activation=classifier_activation, frontend=frontend,
                        name=name, input_tensor=input_tensor, input_normalization=normalization)
    if loader is not None:
        loader.load(model, lambda: build_model(spec, width, num_classes=num_classes,
                                               frontend=frontend,
                                               input_normalization=normalization))
    return model
