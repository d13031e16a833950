"""Pretrained checkpoints: the manifest, trust-on-first-use pins, keras' cache, and `resolve`.

Why this module exists: `mhmodels.build(name, weights=...)` and `mhmodels.download_tflite(...)`
must turn "imagenet", a local path or a URL into a file on disk that is known to be the one the
manifest promises. What is ours is small: the manifest schema and lookup, the sha256 recorded at
the first download of the files whose publisher gives no hash (`pins.json`), the reuse of
keras' own cache, `<url>#sha256=<hex>` pinning, the checks that an unverified body is a whole
weights file and not an HTML page, and `resolve`. The transfer is pooch's (`pooch.retrieve`:
a temporary file in the cache directory, the hash check, then a rename; a mismatching cached
file is fetched again), over requests; our `_Transfer` is the pooch downloader that adds an
overall minimum rate, a progress bar updated on every read, size checks and the content checks.
It never imports TensorFlow, Keras or h5py and never unpickles anything.

Guarantees (tests/test_weights.py checks each against a server on 127.0.0.1):
- The final cache file never exists unverified: a wrong size or hash, an HTML page, a body cut
  short (announced length, or the file's own length for HDF5 / gzip when no hash is known), a
  redirect loop, an HTTP error, a stalled or interrupted transfer leave nothing in the cache.
- Transfers are never resumed: bytes of two responses can never be spliced into one file.
- Files pinned by sha256 are cached per hash (`<cache>/<subdir>/sha256-<hex16>/<name>`), other
  files per URL (`url-<hex16>`), so two files of the same name never evict each other.
- A URL with no known hash is revalidated with the server on each use (ETag / Last-Modified).
- Archives (tar.gz: the Model Garden's TF checkpoints) are checked member by member before any
  byte is written and extracted into a temporary directory that is renamed into place.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path, PurePosixPath
from typing import Sequence

from mhmodels.files import atomic_write
from mhmodels.preprocessing import INPUT_CONVENTIONS, MINUS_ONE_ONE

__all__ = [
    "FORMATS", "QUANTIZATIONS", "ARCHIVES", "Checkpoint", "ChecksumError", "DownloadError",
    "UnverifiedDownloadWarning", "UnpinnedCheckpointWarning", "Resolved", "resolve",
    "pin_status", "read_pins", "pins_path", "manifest_path", "load_manifest",
    "find_checkpoint", "cache_dir", "fetch", "fetch_checkpoint", "resolve_weights",
    "download_tflite",
]

logger = logging.getLogger(__name__)

MANIFEST_ENV = "MHMODELS_WEIGHTS_MANIFEST"
HOME_ENV = "MHMODELS_HOME"
MANIFEST_FORMAT_VERSION = 1

# TFLite quantization kinds: the one definition (mhmodels.export imports it).
QUANTIZATIONS = ("float", "dynamic", "int8", "uint8")
# File suffix of each checkpoint format: keras (our Keras 3 `.weights.h5`), keras_h5 (a
# keras.applications Keras 2 HDF5 file), tf_checkpoint (a TF2 checkpoint, named by its
# `.index` file); every tflite_<q> is a `.tflite`.
SUFFIXES = {"keras": ".weights.h5", "keras_h5": ".h5", "tf_checkpoint": ".index",
            **{f"tflite_{q}": ".tflite" for q in QUANTIZATIONS}}
FORMATS = tuple(SUFFIXES)
ARCHIVES = ("tar.gz",)  # the Model Garden publishes its checkpoints as tar.gz
SOURCES = ("mhmodels", "keras_applications", "model_garden")
PINS_FILE = "pins.json"

DEFAULT_TIMEOUT = 60.0  # seconds: connect / per read, and the window of the minimum rate
MIN_RATE = 1024  # bytes/s over each DEFAULT_TIMEOUT window, or the transfer is abandoned
_CHUNK = 1 << 16
_EXTRACT_MARKER = ".mhmodels-extracted.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_URL_SCHEMES = ("http", "https", "file")
_REQUIRED_FIELDS = ("model", "width", "format", "dataset", "url", "sha256", "size")
_OPTIONAL_FIELDS = ("archive", "member", "resolution", "classes", "source", "md5", "top1",
                    "top1_source", "input")
_WIDTH_TOL = 1e-6


class ChecksumError(ValueError):
    """Downloaded or cached bytes do not match the expected size or hash (the bad file is
    deleted: nothing is cached)."""


class DownloadError(IOError):
    """The transfer failed (HTTP error, unreachable host, dropped or stalled connection) or
    brought something that is not a weights file (an HTML page, a body cut short)."""


class UnverifiedDownloadWarning(UserWarning):
    """A file was fetched from a URL with no known sha256, so its content is not verified."""


class UnpinnedCheckpointWarning(UserWarning):
    """A manifest checkpoint has no published hash: its first download's sha256 was recorded
    (trust on first use) and every later use must match it."""


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


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
    archive: str | None = None
    member: str | None = None
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
        stem += f"-{self.dataset}"
        if self.format != "keras":
            stem += "-" + self.format
        return stem + ("." + self.archive if self.archive else self.suffix)

    def describe(self) -> str:
        res = f" resolution={self.resolution}" if self.resolution is not None else ""
        return (f"{self.model} width={self.width:g}{res} format={self.format} "
                f"dataset={self.dataset}")


def manifest_path() -> Path:
    """Path of the weights manifest: `$MHMODELS_WEIGHTS_MANIFEST`, else the `zoo/weights.json`
    shipped with the package (source checkout or installed `mhmodels/zoo`)."""
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "zoo" / "weights.json", here / "zoo" / "weights.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def load_manifest(path: str | os.PathLike | None = None) -> list[Checkpoint]:
    """Read and strictly validate a weights manifest; a typo must fail loudly rather than make
    a checkpoint silently unfindable."""
    path = Path(path) if path is not None else manifest_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"weights manifest not found: {path}") from None
    try:
        data = json.loads(text)
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
        ckpt = _parse_entry(entry, index, path)
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
    return parts is not None and parts.scheme in _URL_SCHEMES and (
        parts.scheme == "file" or bool(parts.netloc))


# Each manifest field: (accepts its value, what it must be); absent optional fields are None.
_FIELD_RULES = {
    "model": (lambda v: isinstance(v, str) and _NAME_RE.match(v), "must be a registry name"),
    "width": (lambda v: _number(v) and v > 0, "must be a positive number"),
    "format": (lambda v: v in FORMATS, f"must be one of {list(FORMATS)}"),
    "dataset": (lambda v: isinstance(v, str) and _DATASET_RE.match(v),
                "must be a name such as 'imagenet'"),
    "url": (_absolute_url, f"must be an absolute URL with scheme {list(_URL_SCHEMES)}"),
    "sha256": (lambda v: v is None or isinstance(v, str) and _SHA256_RE.match(v),
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
    "archive": (lambda v: v is None or v in ARCHIVES, f"must be null or one of {list(ARCHIVES)}"),
    "input": (lambda v: v in INPUT_CONVENTIONS, f"must be one of {list(INPUT_CONVENTIONS)}"),
}
_FIELD_DEFAULTS = {"source": "mhmodels", "input": MINUS_ONE_ONE}  # input: trained on [-1, 1]


def _parse_entry(entry: object, index: int, path: Path) -> Checkpoint:
    where = f"weights manifest {path}: checkpoints[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    if isinstance(entry.get("model"), str):
        where += f" (model {entry['model']!r})"
    unknown = sorted(set(entry) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    missing = [field for field in _REQUIRED_FIELDS if field not in entry]
    if missing:
        raise ValueError(f"{where}: missing required field {missing[0]!r}")
    values = {**_FIELD_DEFAULTS, **entry}

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{where}: field {field!r} {why}, got {entry.get(field)!r}")

    for field, (accepts, why) in _FIELD_RULES.items():
        if not accepts(values.get(field)):
            raise bad(field, why)
    fmt, archive, member = values["format"], values.get("archive"), values.get("member")
    if fmt == "tf_checkpoint" and archive is None:
        raise bad("archive", "must name the archive kind of a TF checkpoint")
    if archive is None and member is not None:
        raise bad("member", "is only allowed together with 'archive'")
    if archive is not None:
        if not isinstance(member, str) or not member:
            raise bad("member", "must name the file inside the archive")
        try:
            _safe_relpath(member)
        except ValueError:
            raise bad("member", "must be a relative path inside the archive") from None
        if not member.endswith(SUFFIXES[fmt]):
            raise bad("member", f"must end with {SUFFIXES[fmt]!r} for format {fmt!r}")
    values["width"] = float(values["width"])
    if values.get("top1") is not None:
        values["top1"] = float(values["top1"])
    return Checkpoint(**{f.name: values[f.name] for f in dataclasses.fields(Checkpoint)
                         if f.name in values})


def find_checkpoint(model: str, width: float, fmt: str | Sequence[str], dataset: str = "imagenet",
                    manifest: Sequence[Checkpoint] | str | os.PathLike | None = None, *,
                    resolution: int | None = None) -> Checkpoint:
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
    if manifest is None or isinstance(manifest, (str, os.PathLike)):
        source = str(manifest) if manifest is not None else str(manifest_path())
        checkpoints = load_manifest(manifest)
    else:
        source = "the given manifest"
        checkpoints = list(manifest)
    for f in formats:
        found = [c for c in checkpoints
                 if c.model == model and abs(c.width - float(width)) < _WIDTH_TOL
                 and c.format == f and c.dataset == dataset]
        if found:
            exact = [c for c in found if resolution is not None and c.resolution == resolution]
            return exact[0] if exact else max(found, key=lambda c: c.resolution or 0)
    wanted = f"model {model!r} width={float(width):g} format={'|'.join(formats)} dataset={dataset}"
    if not checkpoints:
        raise ValueError(
            f"no pretrained checkpoint for {wanted}: {source} lists no checkpoints at all. "
            "Pass weights=<local .weights.h5 path or URL>, or point "
            f"${MANIFEST_ENV} at a manifest that has one.")
    same_model = [c for c in checkpoints if c.model == model]
    if same_model:
        available = sorted({f"width={c.width:g} format={c.format} dataset={c.dataset}"
                            for c in same_model})
        raise ValueError(f"no pretrained checkpoint for {wanted} in {source}. "
                         f"Available for {model!r}: {'; '.join(available)}")
    models = sorted({c.model for c in checkpoints})
    raise ValueError(f"no pretrained checkpoint for {wanted} in {source}: "
                     f"no checkpoints for {model!r} at all. Models with checkpoints: {models}")




# --------------------------------------------------------------------------------------------
# Cache, pins and fetch
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of the download cache: `$MHMODELS_HOME`, else `~/.cache/mhmodels`."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mhmodels"


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme.lower() in _URL_SCHEMES


def _local_source(url: str) -> Path | None:
    """The local file a `file://` URL or plain path names; None for http(s)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URL with a remote host is not supported: {url}")
        return Path(urllib.request.url2pathname(parts.path))
    if scheme in ("http", "https"):
        return None
    if "://" in url:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; "
                         f"expected one of {list(_URL_SCHEMES)} or a local path")
    return Path(url)


def _safe_relpath(name: str) -> PurePosixPath:
    """Validate an archive-relative path: no absolute paths, drive letters or `..`."""
    if not name or "\x00" in name:
        raise ValueError(f"empty or invalid archive member name {name!r}")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        raise ValueError(f"archive member {name!r} has an absolute path")
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"archive member {name!r} contains '..' (path traversal)")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _split_hash_fragment(url: str) -> tuple[str, str | None]:
    """'https://h/x.h5#sha256=<hex>' -> ('https://h/x.h5', '<hex>') (pip's URL convention)."""
    base, sep, fragment = url.partition("#")
    if not sep:
        return url, None
    m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not m:
        raise ValueError(f"URL fragment {fragment!r} in {url!r} is not '#sha256=<64 hex digits>'")
    return base, m.group(1).lower()


def pins_path() -> Path:
    """Where the sha256 of unpinned checkpoints is recorded at their first download."""
    return cache_dir() / PINS_FILE


def read_pins() -> dict[str, dict]:
    """{url: {'sha256', 'size', 'recorded'}} of every unpinned file downloaded so far."""
    path = pins_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} (the recorded sha256 of unpinned downloads) is unreadable: "
                         f"{e}; fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; fix or delete it")
    return data


def _record_pin(url: str, digest: str, size: int) -> None:
    pins = read_pins()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    pins[url] = {"sha256": digest, "size": size, "recorded": now}
    pins_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write(pins_path(), json.dumps(pins, indent=1, sort_keys=True))


def fetch(url: str | os.PathLike, sha256: str | None = None, size: int | None = None, *,
          cache_subdir: str = "checkpoints", filename: str | None = None,
          progress: bool = True, extract: str | None = None, member: str | None = None,
          timeout: float = DEFAULT_TIMEOUT, min_rate: float = MIN_RATE, md5: str | None = None,
          pin: bool = False) -> Path:
    """Return a verified local copy of `url` (http(s)://, file:// or a local path) in the cache.

    The file lands in `<cache>/<cache_subdir>/sha256-<hex16>/` when its sha256 is known (the
    argument or a '#sha256=<hex>' URL fragment), else in `.../url-<hex16>/`. With `extract`
    ('tar.gz') the archive is unpacked safely beside it and the directory (or `member` inside
    it) is returned. A transfer is abandoned when a read waits `timeout` seconds or when fewer
    than `min_rate` bytes/s arrive over any `timeout`-second window.

    Without a sha256: `pin=True` (manifest checkpoints whose publisher gives no hash) records
    the first download's sha256 in `pins_path()` and makes every later use match it; otherwise
    the copy is unverified and is revalidated with the server (ETag / Last-Modified) on each
    call. `md5` checks a published md5 (keras.applications' MobileNetV3 files).
    """
    url_text = os.fspath(url)
    if isinstance(url, str) and _is_url(url_text):
        url_text, fragment_sha = _split_hash_fragment(url_text)
        if fragment_sha is not None:
            if sha256 is not None and sha256.lower() != fragment_sha:
                raise ValueError(f"sha256={sha256!r} disagrees with the URL's #sha256= fragment")
            sha256 = fragment_sha
    sha256 = sha256.lower() if sha256 is not None else None
    if sha256 is not None and not _SHA256_RE.match(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    md5 = md5.lower() if md5 else None
    if md5 is not None and not _MD5_RE.match(md5):
        raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    if extract is not None and extract not in ARCHIVES:
        raise ValueError(f"extract must be None or one of {list(ARCHIVES)}, got {extract!r}")
    if member is not None and extract is None:
        raise ValueError("member= needs extract= (it names a file inside the archive)")
    if member is not None:
        _safe_relpath(member)
    local = _local_source(url_text)
    if filename is None:
        filename = local.name if local is not None else posixpath.basename(
            urllib.parse.unquote(urllib.parse.urlsplit(url_text).path))
        if not _NAME_RE.match(filename):
            filename = "download" + ("." + extract if extract else "")
    if not _NAME_RE.match(filename):
        raise ValueError(f"invalid cache file name {filename!r}")
    key = (f"sha256-{sha256[:16]}" if sha256 else
           "url-" + hashlib.sha256(url_text.encode()).hexdigest()[:16])
    target = cache_dir() / _safe_relpath(cache_subdir) / key / filename

    recorded = read_pins().get(url_text) if (pin and sha256 is None) else None
    revalidate = sha256 is None and md5 is None and local is None and not pin
    try:
        digest = _fetch_file(
            url_text, target, sha256=sha256 or (recorded or {}).get("sha256"), md5=md5,
            size=size if size is not None else (recorded or {}).get("size"),
            revalidate=revalidate, progress=progress, timeout=timeout, min_rate=min_rate)
    except BaseException as e:
        _prune_empty(target.parent)
        if isinstance(e, ChecksumError) and recorded is not None:
            raise ChecksumError(
                f"{e}. The expected sha256 was recorded at this unpinned file's first download "
                f"({recorded.get('recorded')}) in {pins_path()}; if the publisher replaced the "
                "file on purpose, delete its entry there") from None
        raise
    if pin and sha256 is None and recorded is None:
        _record_pin(url_text, digest, target.stat().st_size)
        warnings.warn(
            f"{url_text} is unpinned (its publisher gives no sha256): the sha256 of this first "
            f"download, {digest}, was recorded in {pins_path()} and every later use must match "
            "it", UnpinnedCheckpointWarning, stacklevel=2)
    elif revalidate:
        warnings.warn(
            f"{url_text} was fetched without a known sha256, so its content is unverified (its "
            f"sha256 is {digest}; to verify it, append '#sha256={digest}' to the URL, e.g. "
            "build(weights='<url>#sha256=...'), or list it in a weights manifest)",
            UnverifiedDownloadWarning, stacklevel=2)
    if extract is None:
        return target
    dest = _extract_cached(target, digest)
    if member is None:
        return dest
    result = dest.joinpath(*_safe_relpath(member).parts)
    if not result.is_file():
        found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                       if p.is_file() and p.name != _EXTRACT_MARKER)
        raise ValueError(f"member {member!r} not found in archive {target.name}; "
                         f"it contains {found[:20]}")
    return result


def _prune_empty(directory: Path) -> None:
    """Remove `directory` and its parents below the cache root while they are empty (what a
    failed download created)."""
    root = cache_dir()
    while root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _meta_path(target: Path) -> Path:
    return target.with_name(target.name + ".meta.json")


def _write_meta(target: Path, url: str, digest: str, transfer: "_Transfer") -> None:
    atomic_write(_meta_path(target), json.dumps({
        "url": url, "sha256": digest, "etag": transfer.etag,
        "last_modified": transfer.last_modified}, indent=1, sort_keys=True))


@contextlib.contextmanager
def _quiet_pooch():
    """pooch, with its INFO lines (one per download, on stderr) off while we use it."""
    import pooch

    log = pooch.get_logger()
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield pooch
    finally:
        log.setLevel(level)


def _fetch_file(url: str, target: Path, *, sha256: str | None, md5: str | None,
                size: int | None, revalidate: bool, **transfer) -> str:
    """Make `target` hold the verified bytes of `url` (through `pooch.retrieve`); return their
    sha256."""
    if target.is_file():
        digest, md5_digest = _digests(target)
        if ((size is None or target.stat().st_size == size) and sha256 in (None, digest)
                and md5 in (None, md5_digest)):
            if revalidate:
                return _revalidate(url, target, digest, **transfer)
            logger.info("using cached %s", target)
            return digest
        logger.warning("cached %s (sha256 %s) does not match its expected size or hash; "
                       "downloading again", target, digest)
        target.unlink()
    elif os.path.lexists(target):
        raise DownloadError(f"cache path {target} exists and is not a regular file")
    known = f"sha256:{sha256}" if sha256 else (f"md5:{md5}" if md5 else None)
    downloader = _Transfer(desc=target.name, size=size, check_complete=sha256 is None,
                           **transfer)
    with _quiet_pooch() as pooch:
        try:
            pooch.retrieve(url, known_hash=known, fname=target.name, path=target.parent,
                           downloader=downloader)
        except (ChecksumError, DownloadError) as e:
            raise type(e)(f"{e}; nothing was kept in the cache") from None
        except ValueError:  # pooch's hash check (it deleted the file)
            alg, want = ("sha256", sha256) if sha256 else ("md5", md5)
            got = getattr(downloader, alg).hexdigest()
            raise ChecksumError(f"{alg} mismatch for {url}: got {got}, expected {want}; "
                                "nothing was kept in the cache") from None
    from mhmodels.files import _umask
    os.chmod(target, 0o666 & ~_umask())  # pooch's temporary file was private (0600)
    digest = downloader.sha256.hexdigest()
    if revalidate:
        _write_meta(target, url, digest, downloader)
    return digest


def _revalidate(url: str, target: Path, digest: str, **transfer) -> str:
    """Ask the server whether an unverified cached copy is still current (a conditional GET
    with its ETag / Last-Modified) and replace it when the URL now serves other bytes; return
    the sha256 of the copy kept. Offline, the cached copy stays, with a warning."""
    try:
        meta = json.loads(_meta_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    headers = {}
    if meta.get("sha256") == digest:
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    downloader = _Transfer(desc=target.name, size=None, check_complete=True, headers=headers,
                           **transfer)
    with _quiet_pooch() as pooch:
        try:
            with pooch.utils.temporary_file(target.parent) as tmp:
                downloader(url, tmp)
                if downloader.not_modified:
                    logger.info("cached %s is current (HTTP 304)", target)
                    return digest
                os.replace(tmp, target)
        except DownloadError as e:
            if downloader.arrived:  # the server answered with something unusable
                raise DownloadError(f"{e}; the cached copy {target} was kept") from None
            warnings.warn(f"could not check whether {url} changed ({e}); using the cached copy "
                          f"{target}", UnverifiedDownloadWarning, stacklevel=4)
            return digest
    new = downloader.sha256.hexdigest()
    if new != digest:
        logger.warning("%s changed since it was cached (sha256 %s -> %s); using the new copy",
                       url, digest, new)
    _write_meta(target, url, new, downloader)
    return new


def _error_reason(error: BaseException) -> str:
    """The useful part of a requests error ('[Errno 111] Connection refused', not the pool's
    whole repr)."""
    text = str(error)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    return m.group(0).strip() if m else text


class _Transfer:
    """The pooch downloader: one GET (or a local copy) into pooch's temporary file.

    Beyond requests' per-read timeout it abandons a transfer slower than `min_rate` bytes/s
    over any `timeout`-second window; it updates the progress bar on every read, checks the
    announced and received sizes, hashes the bytes as they arrive, and refuses a body that is
    an HTML page or (with no hash to check it) a file cut short."""

    def __init__(self, *, desc: str, size: int | None, check_complete: bool, progress: bool,
                 timeout: float, min_rate: float, headers: dict[str, str] | None = None):
        self.desc, self.size, self.check_complete = desc, size, check_complete
        self.progress, self.timeout, self.min_rate = progress, timeout, min_rate
        self.headers = headers or {}
        self.sha256, self.md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        self.etag = self.last_modified = self.content_type = None
        self.not_modified = False  # a conditional GET answered 304
        self.arrived = False  # the whole body arrived (later errors are about its content)

    def __call__(self, url: str, output_file: str, pooch=None) -> None:
        local = _local_source(url)
        with open(output_file, "wb") as out:
            if local is not None:
                self._copy(local, out)
            else:
                self._get(url, out)
            out.flush()
            os.fsync(out.fileno())
        if self.not_modified:
            return
        self.arrived = True
        got = os.path.getsize(output_file)
        if self.size is not None and got != self.size:
            raise ChecksumError(f"size mismatch for {url}: got {got} bytes, expected "
                                f"{self.size} (truncated or wrong file)")
        problem = _content_problem(Path(output_file), self.content_type,
                                   check_complete=self.check_complete)
        if problem is not None:
            raise DownloadError(f"{url}: {problem}")

    def _bar(self, total: int | None):
        from tqdm import tqdm

        return tqdm(total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, disable=not self.progress, leave=True)

    def _check_announced(self, url: str, total: int | None) -> None:
        if self.size is not None and total is not None and total != self.size:
            raise ChecksumError(f"size mismatch for {url}: it has {total} bytes, expected "
                                f"{self.size} (truncated or wrong file)")

    def _copy(self, source: Path, out) -> None:
        if not source.is_file():
            raise DownloadError(f"local file not found: {source}" if not source.exists()
                                else f"{source} is not a regular file")
        total = source.stat().st_size
        self._check_announced(str(source), total)
        with open(source, "rb") as src:
            self._stream(str(source), src.read, out, total)

    def _get(self, url: str, out) -> None:
        import requests

        headers = {"User-Agent": "mhmodels-weights/2", "Accept-Encoding": "identity",
                   **self.headers}
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.TooManyRedirects:
            raise DownloadError(f"{url} redirects in a loop (more than 30 redirects)") from None
        except requests.RequestException as e:
            raise DownloadError(f"could not download {url}: {_error_reason(e)}") from None
        with response:
            if response.status_code == 304 and self.headers:
                self.not_modified = True
                return
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code} {response.reason} while "
                                    f"downloading {url}")
            self.etag = response.headers.get("ETag")
            self.last_modified = response.headers.get("Last-Modified")
            self.content_type = response.headers.get("Content-Type")
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            self._check_announced(url, total)
            # read1: whatever has arrived (urllib3 >= 2.3), so the bar and the rate see each read
            self._stream(url, getattr(response.raw, "read1", response.raw.read), out, total)

    def _stream(self, url: str, read, out, total: int | None) -> None:
        received, failure = 0, None
        window_start, window_bytes = time.monotonic(), 0
        with self._bar(total) as bar:
            while True:
                try:
                    chunk = read(_CHUNK)
                except Exception as e:  # noqa: BLE001 - any failed read ends the transfer
                    failure = e
                    break
                if not chunk:
                    break
                received += len(chunk)
                if self.size is not None and received > self.size:
                    raise ChecksumError(f"{url} sent more than the expected {self.size} bytes")
                out.write(chunk)
                self.sha256.update(chunk)
                self.md5.update(chunk)
                bar.update(len(chunk))
                now = time.monotonic()
                if now - window_start >= self.timeout:
                    rate = (received - window_bytes) / (now - window_start)
                    if rate < self.min_rate:
                        raise DownloadError(
                            f"download of {url} stalled: {rate:.0f} bytes/s over the last "
                            f"{now - window_start:.1f} s (minimum {self.min_rate:g} bytes/s)")
                    window_start, window_bytes = now, received
        if failure is not None or (total is not None and received < total):
            reason = f" ({_error_reason(failure)})" if failure is not None else ""
            raise DownloadError(f"download of {url} was interrupted after {received} of "
                                f"{total if total is not None else '?'} bytes{reason} (a "
                                "later call starts again from zero)")


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _content_problem(path: Path, content_type: str | None, *, check_complete: bool
                     ) -> str | None:
    """Why the bytes at `path` are not a usable file, or None.

    An HTML page (an error or log-in page served with status 200) is never a checkpoint. When
    no hash is known, a transfer that ended early without a Content-Length is only visible in
    the file itself: HDF5 records its length in the superblock, gzip has a trailer.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if (content_type or "").split(";")[0].strip().lower() == "text/html" or (
            head.lstrip().lower().startswith((b"<!doctype html", b"<html"))):
        return "the server returned an HTML page (an error or log-in page?), not a weights file"
    if not check_complete:
        return None
    size = path.stat().st_size
    if head.startswith(_HDF5_SIGNATURE):
        eof = _hdf5_end_of_file(head)
        if eof is not None and eof > size:
            return (f"the transfer ended early: the HDF5 file declares {eof} bytes but only "
                    f"{size} arrived")
    elif head.startswith(b"\x1f\x8b"):
        import gzip

        try:
            with gzip.open(path, "rb") as g:
                while g.read(1 << 20):
                    pass
        except (EOFError, OSError) as e:
            return f"the transfer ended early or the gzip data is damaged ({e})"
    return None


def _hdf5_end_of_file(head: bytes) -> int | None:
    """The end-of-file address an HDF5 superblock declares (versions 0-3), or None."""
    version = head[8]
    try:
        if version in (0, 1):
            offsets = head[13]
            pos = 24 + (4 if version == 1 else 0) + 2 * offsets  # base, free-space addresses
        elif version in (2, 3):
            offsets = head[9]
            pos = 12 + 2 * offsets  # base address, superblock extension address
        else:
            return None
        return int.from_bytes(head[pos:pos + offsets], "little")
    except IndexError:
        return None


# --------------------------------------------------------------------------------------------
# Archives (tar.gz). Not pooch's Untar: it applies tarfile's 'data' filter only on Python
# >= 3.12 and extracts in place (a killed extraction leaves a half directory that its
# "files exist" check then trusts), and the filter of older Pythons had bypasses
# (CVE-2025-4517). So the members are checked here before any byte is written.
# --------------------------------------------------------------------------------------------


def _extract_cached(archive: Path, digest: str) -> Path:
    """Extract `archive` once per content hash (a marker in the directory records it) into a
    temporary directory renamed into place; an unsafe or broken archive is deleted."""
    name = archive.name
    dest = archive.with_name(name[: -len(".tar.gz")] if name.endswith(".tar.gz") and
                             len(name) > 7 else name + "_extracted")
    marker = dest / _EXTRACT_MARKER
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("sha256") == digest:
            return dest
    except (OSError, ValueError):
        pass
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=archive.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _validate_tar(tar)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **extra)
        (tmp / _EXTRACT_MARKER).write_text(json.dumps({"sha256": digest}), encoding="utf-8")
        if os.path.lexists(dest):
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=archive.parent))
            os.replace(dest, old / "d")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (ValueError, tarfile.TarError)):  # never keep an unusable archive
            archive.unlink(missing_ok=True)
            _prune_empty(archive.parent)
            if not isinstance(e, ValueError):
                raise ValueError(f"cannot extract {archive.name}: {e}") from e
        raise
    return dest


def _validate_tar(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Only regular files and directories with relative names and no `..` (a checkpoint
    archive holds nothing else): no link, device or fifo, so nothing can leave the root."""
    members = tar.getmembers()
    for info in members:
        _safe_relpath(info.name)
        if not (info.isfile() or info.isdir()):
            raise ValueError(f"archive member {info.name!r} is a link or special file; "
                             "checkpoint archives may hold only files and directories")
    return members


# --------------------------------------------------------------------------------------------
# Entry points used by build() and download_tflite()
# --------------------------------------------------------------------------------------------


def keras_cache_path(ckpt: Checkpoint) -> Path:
    """Where keras.applications caches this file (`$KERAS_HOME/models/<published name>`)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return home / "models" / ckpt.cache_filename


def fetch_checkpoint(ckpt: Checkpoint, *, progress: bool = True) -> Path:
    """Download (or find in the cache) a manifest checkpoint and return its usable file.

    A keras.applications file that keras itself already downloaded is used in place (after the
    same verification), so the two caches never hold the file twice.
    """
    if ckpt.format == "keras_h5":
        mirror = keras_cache_path(ckpt)
        if mirror.is_file():
            digest, md5_digest = _digests(mirror)
            recorded = read_pins().get(ckpt.url)
            if ckpt.sha256 is not None:
                ok = digest == ckpt.sha256
            elif ckpt.md5 is not None:
                ok = md5_digest == ckpt.md5
            else:
                ok = recorded is None or recorded.get("sha256") == digest
            if ok and _content_problem(mirror, None, check_complete=True) is None:
                if not ckpt.pinned and recorded is None:
                    _record_pin(ckpt.url, digest, mirror.stat().st_size)
                    warnings.warn(
                        f"{ckpt.url} is unpinned (no published sha256): the sha256 of keras's "
                        f"cached copy {mirror}, {digest}, was recorded in {pins_path()} and "
                        "every later use must match it", UnpinnedCheckpointWarning, stacklevel=2)
                logger.info("using keras's cached %s", mirror)
                return mirror
            logger.warning("keras's cached %s does not match the manifest; downloading our own "
                           "copy", mirror)
    return fetch(ckpt.url, ckpt.sha256, ckpt.size, cache_subdir="checkpoints",
                 filename=ckpt.cache_filename, progress=progress, extract=ckpt.archive,
                 member=ckpt.member, md5=ckpt.md5, pin=not ckpt.pinned)

def pin_status(ckpt: Checkpoint) -> str:
    """How a checkpoint's bytes are verified, in words (for `weights list` and messages)."""
    if ckpt.sha256 is not None:
        return "sha256 (published)"
    if ckpt.md5 is not None:
        return "md5 (published)"
    recorded = read_pins().get(ckpt.url)
    if recorded is not None:
        return f"unpinned; sha256 recorded {recorded.get('recorded', '?')[:10]}"
    return "unpinned; sha256 recorded at first download"


def _manifest_entry_for_url(url: str) -> Checkpoint | None:
    for ckpt in load_manifest():
        if ckpt.url == url:
            return ckpt
    return None


# Formats that build(weights=<dataset>) can load into a Keras model, in order of preference.
LOADABLE_FORMATS = ("keras", "keras_h5", "tf_checkpoint")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A `weights=` argument turned into a local file (and its manifest entry, if any)."""

    path: Path
    checkpoint: Checkpoint | None = None


def resolve(model: str, width: float, weights: str | os.PathLike, *,
            resolution: int | None = None, progress: bool = True) -> Resolved:
    """Turn `build(..., weights=...)` (not None) into a local file.

    - a dataset name such as 'imagenet' → the manifest's checkpoint for (model, width), in our
      own format or a keras.applications file, preferring one trained at `resolution`;
      downloaded and verified.
    - an existing local path (str or PathLike) → that path, unchanged (no copy).
    - an http(s):// or file:// URL → downloaded to the cache; verified when the manifest knows
      the URL or the URL ends in '#sha256=<hex>', otherwise fetched with an
      UnverifiedDownloadWarning (and revalidated with the server on later calls).
    Dataset names win over same-named files; pass './name' or a Path for such a file.
    """
    if isinstance(weights, os.PathLike):
        path = Path(weights)
        if not path.exists():
            raise ValueError(f"weights file not found: {path}")
        return Resolved(path)
    if not isinstance(weights, str):
        raise ValueError(f"weights must be None, a dataset name, a path or a URL, "
                         f"got {type(weights).__name__}")
    if _is_url(weights):
        known = _manifest_entry_for_url(_split_hash_fragment(weights)[0])
        if known is not None:
            return Resolved(fetch_checkpoint(known, progress=progress), known)
        return Resolved(fetch(weights, cache_subdir="checkpoints", progress=progress))
    if _DATASET_RE.match(weights):
        ckpt = find_checkpoint(model, width, LOADABLE_FORMATS, dataset=weights,
                               resolution=resolution)
        if resolution is not None and ckpt.resolution not in (None, resolution):
            logger.warning("%s was trained at %dx%d; building at %dx%d works but its accuracy "
                           "is not the published one", ckpt.describe(), ckpt.resolution,
                           ckpt.resolution, resolution, resolution)
        return Resolved(fetch_checkpoint(ckpt, progress=progress), ckpt)
    path = Path(weights).expanduser()
    if path.exists():
        return Resolved(path)
    raise ValueError(
        f"weights={weights!r} is neither None, a dataset name (e.g. 'imagenet'), an existing "
        "file, nor an http(s):// or file:// URL")


def resolve_weights(model: str, width: float, weights: str | os.PathLike | None, *,
                    progress: bool = True) -> Path | None:
    """`resolve(...)`'s file, or None for weights=None (random initialisation)."""
    if weights is None:
        return None
    return resolve(model, width, weights, progress=progress).path


def download_tflite(model: str, width: float = 1.0, quantization: str = "float", *,
                    dataset: str = "imagenet", resolution: int | None = None,
                    progress: bool = True) -> Path:
    """Download a published `.tflite` file (float | dynamic | int8 | uint8) for a zoo model,
    for users who only need the on-device artefact: neither this nor `import mhmodels` loads
    TensorFlow or Keras (the package still needs a TensorFlow installed to import)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, "
                         f"got {quantization!r}")
    ckpt = find_checkpoint(model, width, f"tflite_{quantization}", dataset=dataset,
                           resolution=resolution)
    return fetch_checkpoint(ckpt, progress=progress)
