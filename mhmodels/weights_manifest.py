"""The weights manifest (`zoo/weights.json`): its schema, strictly validated, and the lookup
of a (model, width, format, dataset[, resolution]) checkpoint.

Why a module of its own: it is data and rules with no network, shared by `mhmodels.weights`
(which downloads and verifies what an entry names), `weights list` and the TFLite cache.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import re
import urllib.parse
from pathlib import Path
from typing import Sequence

from mhmodels.files import builtin_zoo_dir
from mhmodels.preprocessing import INPUT_CONVENTIONS, MINUS_ONE_ONE

__all__ = ["QUANTIZATIONS", "FORMATS", "LOADABLE_FORMATS", "Checkpoint", "manifest_path",
           "load_manifest", "find_checkpoint"]

MANIFEST_ENV = "MHMODELS_WEIGHTS_MANIFEST"
MANIFEST_FORMAT_VERSION = 1
# TFLite quantization kinds: the one definition (mhmodels.export imports it).
QUANTIZATIONS = ("float", "dynamic", "int8", "uint8")
# File suffix of each format a manifest may list: keras (our Keras 3 `.weights.h5`), keras_h5
# (a keras.applications Keras 2 HDF5 file), tflite_<q>. A TF (Model Garden) checkpoint is
# several files and none is published: it loads from a local path (`weights='<prefix>.index'`).
SUFFIXES = {"keras": ".weights.h5", "keras_h5": ".h5",
            **{f"tflite_{q}": ".tflite" for q in QUANTIZATIONS}}
FORMATS = tuple(SUFFIXES)
# Formats that build(weights=<dataset>) can load into a Keras model, in order of preference.
LOADABLE_FORMATS = ("keras", "keras_h5")
SOURCES = ("mhmodels", "keras_applications", "model_garden")
URL_SCHEMES = ("http", "https", "file")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_WIDTH_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One manifest entry: where a (model, width, format, dataset) checkpoint lives and what its
    bytes must hash to."""

    model: str
    width: float
    format: str
    dataset: str
    url: str
    sha256: str | None  # None: no published sha256 (see `pinned`)
    size: int | None
    resolution: int | None = None  # input height = width the checkpoint was trained at
    classes: int | None = None  # 1000 (keras.applications) or 1001 (background first)
    source: str = "mhmodels"
    md5: str | None = None  # published md5 (keras.applications' MobileNetV3 files)
    input: str = MINUS_ONE_ONE  # the input it was trained on (INPUT_CONVENTIONS)
    top1: float | None = None  # published ImageNet top-1 (%)
    top1_source: str | None = None

    @property
    def suffix(self) -> str:
        """File suffix of the usable artefact (Keras' `load_weights` dispatches on it)."""
        return SUFFIXES[self.format]

    @property
    def pinned(self) -> bool:
        """Whether a published hash (sha256 or md5) verifies the bytes; unpinned files are
        verified against the sha256 recorded at their first download."""
        return self.sha256 is not None or self.md5 is not None

    @property
    def cache_filename(self) -> str:
        """Name of the downloaded file in the cache, independent of the URL's spelling
        (keras.applications files keep their published name, as keras caches them)."""
        if self.format == "keras_h5":
            return posixpath.basename(urllib.parse.urlsplit(self.url).path)
        stem = f"{self.model}-w{self.width:g}"
        if self.resolution is not None:
            stem += f"-r{self.resolution}"
        stem += f"-{self.dataset}" + ("" if self.format == "keras" else "-" + self.format)
        return stem + self.suffix

    def describe(self) -> str:
        res = f" resolution={self.resolution}" if self.resolution is not None else ""
        return (f"{self.model} width={self.width:g}{res} format={self.format} "
                f"dataset={self.dataset}")


def manifest_path() -> Path:
    """Path of the weights manifest: `$MHMODELS_WEIGHTS_MANIFEST`, else the `zoo/weights.json`
    shipped with the package (source checkout or installed `mhmodels/zoo`)."""
    env = os.environ.get(MANIFEST_ENV)
    return Path(env).expanduser() if env else builtin_zoo_dir() / "weights.json"


def load_manifest(path: str | os.PathLike | None = None) -> list[Checkpoint]:
    """Read and strictly validate a weights manifest; a typo must fail loudly rather than make
    a checkpoint silently unfindable."""
    path = Path(path) if path is not None else manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"weights manifest not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"weights manifest {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"weights manifest {path}: top level must be an object")
    unknown = sorted(set(data) - {"format_version", "checkpoints"})
    if unknown:
        raise ValueError(f"weights manifest {path}: unknown top-level field(s) {unknown}")
    if data.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ValueError(
            f"weights manifest {path}: field 'format_version' must be {MANIFEST_FORMAT_VERSION}, "
            f"got {data.get('format_version')!r}")
    entries = data.get("checkpoints")
    if not isinstance(entries, list):
        raise ValueError(f"weights manifest {path}: field 'checkpoints' must be a list")
    checkpoints: list[Checkpoint] = []
    seen: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        ckpt = _parse_entry(entry, f"weights manifest {path}: checkpoints[{index}]")
        key = (ckpt.model, round(ckpt.width, 6), ckpt.format, ckpt.dataset, ckpt.resolution)
        if key in seen:
            raise ValueError(
                f"weights manifest {path}: checkpoints[{index}] ({ckpt.describe()}) duplicates "
                f"checkpoints[{seen[key]}]")
        seen[key] = index
        checkpoints.append(ckpt)
    return checkpoints


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _absolute_url(value: object) -> bool:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    return parts is not None and parts.scheme in URL_SCHEMES and (
        parts.scheme == "file" or bool(parts.netloc))


_REQUIRED_FIELDS = ("model", "width", "format", "dataset", "url", "sha256", "size")
# Each manifest field: (accepts its value, what it must be); absent optional fields are None.
_FIELD_RULES = {
    "model": (lambda v: isinstance(v, str) and NAME_RE.match(v), "must be a registry name"),
    "width": (lambda v: _number(v) and v > 0, "must be a positive number"),
    "format": (lambda v: v in FORMATS, f"must be one of {list(FORMATS)}"),
    "dataset": (lambda v: isinstance(v, str) and DATASET_RE.match(v),
                "must be a name such as 'imagenet'"),
    "url": (_absolute_url, f"must be an absolute URL with scheme {list(URL_SCHEMES)}"),
    "sha256": (lambda v: v is None or isinstance(v, str) and SHA256_RE.match(v),
               "must be 64 lowercase hex digits or null (none published)"),
    "size": (lambda v: v is None or _positive_int(v),
             "must be a positive integer (bytes) or null (unknown)"),
    "md5": (lambda v: v is None or isinstance(v, str) and _MD5_RE.match(v),
            "must be 32 lowercase hex digits or null"),
    "resolution": (lambda v: v is None or _positive_int(v), "must be a positive integer or null"),
    "classes": (lambda v: v is None or _positive_int(v), "must be a positive integer or null"),
    "source": (lambda v: v in SOURCES, f"must be one of {list(SOURCES)}"),
    "top1": (lambda v: v is None or _number(v) and 0 < v <= 100,
             "must be a percentage in (0, 100] or null"),
    "top1_source": (lambda v: v is None or isinstance(v, str), "must be a string or null"),
    "input": (lambda v: v in INPUT_CONVENTIONS, f"must be one of {list(INPUT_CONVENTIONS)}"),
}
_FIELD_DEFAULTS = {"source": "mhmodels", "input": MINUS_ONE_ONE}  # input: trained on [-1, 1]


def _parse_entry(entry: object, where: str) -> Checkpoint:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    if isinstance(entry.get("model"), str):
        where += f" (model {entry['model']!r})"
    unknown = sorted(set(entry) - set(_FIELD_RULES))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    missing = [field for field in _REQUIRED_FIELDS if field not in entry]
    if missing:
        raise ValueError(f"{where}: missing required field {missing[0]!r}")
    values = {**_FIELD_DEFAULTS, **entry}
    for field, (accepts, why) in _FIELD_RULES.items():
        if not accepts(values.get(field)):
            raise ValueError(f"{where}: field {field!r} {why}, got {entry.get(field)!r}")
    values["width"] = float(values["width"])
    if values.get("top1") is not None:
        values["top1"] = float(values["top1"])
    return Checkpoint(**values)


def find_checkpoint(model: str, width: float, fmt: str | Sequence[str], dataset: str = "imagenet",
                    *, resolution: int | None = None) -> Checkpoint:
    """Find the manifest entry for (model, width, format(s), dataset[, resolution]); the error
    lists what *is* published so the user can pick a width/format that exists.

    `fmt` may be a sequence of acceptable formats (first match in that order wins). With a
    `resolution` an entry trained at that input size is preferred; without one (or when none
    matches) the largest resolution is taken, as keras.applications does.
    """
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown checkpoint format {f!r}; expected one of {list(FORMATS)}")
    source, checkpoints = manifest_path(), load_manifest()
    for f in formats:
        found = [c for c in checkpoints
                 if c.model == model and abs(c.width - float(width)) < _WIDTH_TOL
                 and c.format == f and c.dataset == dataset]
        if found:
            exact = [c for c in found if resolution is not None and c.resolution == resolution]
            return exact[0] if exact else max(found, key=lambda c: c.resolution or 0)
    wanted = f"model {model!r} width={float(width):g} format={'|'.join(formats)} dataset={dataset}"
    same_model = sorted({f"width={c.width:g} format={c.format} dataset={c.dataset}"
                         for c in checkpoints if c.model == model})
    if same_model:
        raise ValueError(f"no pretrained checkpoint for {wanted} in {source}. "
                         f"Available for {model!r}: {'; '.join(same_model)}")
    models = sorted({c.model for c in checkpoints})
    raise ValueError(f"no pretrained checkpoint for {wanted} in {source}: no checkpoints for "
                     f"{model!r} at all. Models with checkpoints: {models} (or pass weights="
                     f"<path or URL>, or point ${MANIFEST_ENV} at a manifest that has one)")
