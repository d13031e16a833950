"""Pretrained checkpoints: manifest lookup, download, cache and verification.

Why this module exists: `mhmodels.build(name, weights=...)` and `mhmodels.download_tflite(...)`
must turn "imagenet", a local path or a URL into a file on disk that is known to be the one the
manifest promises. Everything here is plain Python (urllib, hashlib, tarfile, zipfile, tqdm);
it never imports TensorFlow and never unpickles anything.

Guarantees:
- The manifest (`zoo/weights.json`, or `$MHMODELS_WEIGHTS_MANIFEST`) is validated strictly.
- Downloads go to `<cache>/<subdir>/<name>.part`, are resumed with an HTTP Range request when a
  `.part` exists (a server that ignores Range makes us restart from zero), and are checked for
  size and sha256 before an atomic `os.replace` puts them in place. A checksum or size mismatch
  deletes the `.part` and raises `ChecksumError`: nothing is left in the cache. Only an
  *interrupted* transfer (connection dropped before the announced length arrived) keeps its
  `.part`, so that calling again resumes it; the final file never exists unverified.
- Archives (tar.gz, zip) are checked member by member (no absolute paths, no `..`, no links or
  special files that leave the destination) and extracted into a temporary directory that is
  renamed into place.
- Nothing unusable is cached: an HTML page (an error or log-in page served with 200) is
  refused, and without a known hash a transfer that ended early with no Content-Length is
  caught from the file itself (HDF5 superblock length, gzip trailer, zip directory).
- Checkpoints whose publisher gives no hash (keras.applications' V1/V2 files, the Model Garden's
  TFLite files) are pinned on first use: the sha256 of the first download is recorded in
  `<cache>/pins.json` and every later use must match it; `pin_status` and the warning say so.
  A URL with no known hash at all is revalidated with the server on each use (ETag /
  Last-Modified), so a changed file is fetched again; `<url>#sha256=<hex>` pins it.

Why not `keras.utils.get_file`: it writes straight to the final file name (a killed transfer
leaves a truncated file that later calls trust when no hash is given), cannot resume, and has
no trust-on-first-use record, HTML or truncation check. What it offers that we need is kept
by reuse instead: keras' own cache (`$KERAS_HOME/models`) is read, so a file keras already
downloaded is verified and used in place; hashing is hashlib, as in keras.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import math
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from mhmodels.preprocessing import INPUT_CONVENTIONS, MINUS_ONE_ONE

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "ARCHIVES",
    "Checkpoint",
    "ChecksumError",
    "DownloadError",
    "UnverifiedDownloadWarning",
    "UnpinnedCheckpointWarning",
    "Resolved",
    "resolve",
    "pin_status",
    "read_pins",
    "pins_path",
    "manifest_path",
    "load_manifest",
    "find_checkpoint",
    "cache_dir",
    "fetch",
    "fetch_checkpoint",
    "resolve_weights",
    "download_tflite",
]

logger = logging.getLogger(__name__)

MANIFEST_ENV = "MHMODELS_WEIGHTS_MANIFEST"
HOME_ENV = "MHMODELS_HOME"
MANIFEST_FORMAT_VERSION = 1

QUANTIZATIONS = ("float", "dynamic", "int8", "uint8")
# keras: our own Keras 3 `.weights.h5`; keras_h5: a keras.applications (Keras 2 HDF5) file,
# converted on load by mhmodels.pretrained; tf_checkpoint: a TF2 checkpoint archive.
FORMATS = ("keras", "keras_h5", "tf_checkpoint") + tuple(f"tflite_{q}" for q in QUANTIZATIONS)
ARCHIVES = ("tar.gz", "zip")
SOURCES = ("mhmodels", "keras_applications", "model_garden")

_CHUNK = 1 << 16
_DEFAULT_TIMEOUT = 60.0
_EXTRACT_MARKER = ".mhmodels-extracted.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_URL_SCHEMES = ("http", "https", "file")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_REQUIRED_FIELDS = ("model", "width", "format", "dataset", "url", "sha256", "size")
_OPTIONAL_FIELDS = ("archive", "member", "resolution", "classes", "source", "md5", "top1",
                    "top1_source", "input")

PINS_FILE = "pins.json"
_WIDTH_TOL = 1e-6


class ChecksumError(ValueError):
    """Downloaded or cached bytes do not match the expected size or sha256 (never retried
    silently into the cache: the bad file is deleted)."""


class DownloadError(IOError):
    """The transfer itself failed (HTTP error, unreachable host, dropped connection)."""


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
        return {"keras": ".weights.h5", "keras_h5": ".h5", "tf_checkpoint": ".ckpt"}.get(
            self.format, ".tflite")

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
        if self.archive:
            return stem + "." + self.archive
        return stem + self.suffix

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


def _parse_entry(entry: object, index: int, path: Path) -> Checkpoint:
    where = f"weights manifest {path}: checkpoints[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    if isinstance(entry.get("model"), str):
        where += f" (model {entry['model']!r})"

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{where}: field {field!r} {why}, got {entry.get(field)!r}")

    unknown = sorted(set(entry) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    for field in _REQUIRED_FIELDS:
        if field not in entry:
            raise ValueError(f"{where}: missing required field {field!r}")

    model = entry["model"]
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise bad("model", "must be a registry name")
    width = entry["width"]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
            math.isfinite(width) and width > 0):
        raise bad("width", "must be a positive number")
    fmt = entry["format"]
    if fmt not in FORMATS:
        raise bad("format", f"must be one of {list(FORMATS)}")
    dataset = entry["dataset"]
    if not isinstance(dataset, str) or not _DATASET_RE.match(dataset):
        raise bad("dataset", "must be a name such as 'imagenet'")
    url = entry["url"]
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in _URL_SCHEMES or (
            urllib.parse.urlsplit(url).scheme != "file" and not urllib.parse.urlsplit(url).netloc):
        raise bad("url", f"must be an absolute URL with scheme {list(_URL_SCHEMES)}")
    sha = entry["sha256"]
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
        raise bad("sha256", "must be 64 lowercase hex digits or null (none published)")
    size = entry["size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise bad("size", "must be a positive integer (bytes) or null (unknown)")
    md5 = entry.get("md5")
    if md5 is not None and (not isinstance(md5, str) or not _MD5_RE.match(md5)):
        raise bad("md5", "must be 32 lowercase hex digits or null")
    for field in ("resolution", "classes"):
        value = entry.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise bad(field, "must be a positive integer or null")
    source = entry.get("source", "mhmodels")
    if source not in SOURCES:
        raise bad("source", f"must be one of {list(SOURCES)}")
    top1 = entry.get("top1")
    if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, (int, float))
                             or not 0 < top1 <= 100):
        raise bad("top1", "must be a percentage in (0, 100] or null")
    top1_source = entry.get("top1_source")
    if top1_source is not None and not isinstance(top1_source, str):
        raise bad("top1_source", "must be a string or null")
    archive = entry.get("archive")
    if archive is not None and archive not in ARCHIVES:
        raise bad("archive", f"must be null or one of {list(ARCHIVES)}")
    member = entry.get("member")
    # A TF checkpoint is named by its '.index' file (its prefix is that name without it).
    suffix = {"keras": ".weights.h5", "keras_h5": ".h5", "tf_checkpoint": ".index"}.get(
        fmt, ".tflite")
    if fmt == "tf_checkpoint" and archive is None:
        raise bad("archive", "must name the archive kind of a TF checkpoint")
    if archive is None:
        if member is not None:
            raise bad("member", "is only allowed together with 'archive'")
    else:
        if not isinstance(member, str) or not member:
            raise bad("member", "must name the file inside the archive")
        try:
            _safe_relpath(member)
        except ValueError:
            raise bad("member", "must be a relative path inside the archive") from None
        if not member.endswith(suffix):
            raise bad("member", f"must end with {suffix!r} for format {fmt!r}")
    convention = entry.get("input", MINUS_ONE_ONE)  # absent: trained on [-1, 1]
    if convention not in INPUT_CONVENTIONS:
        raise bad("input", f"must be one of {list(INPUT_CONVENTIONS)}")
    return Checkpoint(model=model, width=float(width), format=fmt, dataset=dataset, url=url,
                      sha256=sha, size=size, archive=archive, member=member,
                      resolution=entry.get("resolution"), classes=entry.get("classes"),
                      source=source, md5=md5, input=convention,
                      top1=None if top1 is None else float(top1),
                      top1_source=top1_source)


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
# Cache and fetch
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of the download cache: `$MHMODELS_HOME`, else `~/.cache/mhmodels`."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mhmodels"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme.lower() in _URL_SCHEMES


def _local_source(url: str | os.PathLike) -> Path | None:
    """The local file a `file://` URL or plain path names; None for http(s)."""
    if isinstance(url, os.PathLike):
        return Path(url)
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


def _check_filename(name: str) -> str:
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or name.endswith(".part")):
        raise ValueError(f"invalid cache file name {name!r}")
    return name


def _safe_relpath(name: str) -> PurePosixPath:
    """Validate an archive-relative path: no absolute paths, drive letters or `..`."""
    if not name or "\x00" in name:
        raise ValueError(f"empty or invalid archive member name {name!r}")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        raise ValueError(f"archive member {name!r} has an absolute path")
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
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


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _record_pin(url: str, digest: str, size: int) -> None:
    import datetime

    pins = read_pins()
    pins[url] = {"sha256": digest, "size": size,
                 "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds")}
    _write_json_atomic(pins_path(), pins)


def fetch(url: str | os.PathLike, sha256: str | None = None, size: int | None = None, *,
          cache_subdir: str = "checkpoints", filename: str | None = None,
          progress: bool = True, extract: str | None = None, member: str | None = None,
          timeout: float = _DEFAULT_TIMEOUT, md5: str | None = None,
          pin: bool = False) -> Path:
    """Return a verified local copy of `url` (http(s)://, file:// or a local path) in the cache.

    Why: weights must be downloaded once, resumably, and never used unless their size and
    sha256 match. With `extract` ('tar.gz' | 'zip') the archive is unpacked safely next to it
    and the directory (or `member` inside it) is returned.

    Without a sha256 (argument or a '#sha256=<hex>' URL fragment): `pin=True` (manifest
    checkpoints whose publisher gives no hash) records the first download's sha256 in
    `pins_path()` and makes every later use match it; otherwise the copy is unverified and is
    revalidated with the server (ETag / Last-Modified) on each call, so a changed URL is fetched
    again. `md5` checks a published md5 (keras.applications' MobileNetV3 files).
    """
    url_text = os.fspath(url)
    if isinstance(url, str) and _is_url(url_text):
        url_text, fragment_sha = _split_hash_fragment(url_text)
        if fragment_sha is not None:
            if sha256 is not None and sha256.lower() != fragment_sha:
                raise ValueError(f"sha256={sha256!r} disagrees with the URL's #sha256= fragment")
            sha256 = fragment_sha
        url = url_text
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if md5 is not None and not _MD5_RE.match(md5.lower()):
        raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
    md5 = md5.lower() if md5 else None
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    if extract is not None and extract not in ARCHIVES:
        raise ValueError(f"extract must be None or one of {list(ARCHIVES)}, got {extract!r}")
    if member is not None and extract is None:
        raise ValueError("member= needs extract= (it names a file inside the archive)")
    if member is not None:
        _safe_relpath(member)
    subdir = _safe_relpath(cache_subdir)
    local = _local_source(url)

    if filename is None:
        if local is not None:
            filename = local.name
        else:
            url_path = urllib.parse.urlsplit(url_text).path
            filename = posixpath.basename(urllib.parse.unquote(url_path))
        try:
            _check_filename(filename)
        except ValueError:
            filename = (sha256[:16] if sha256 else "download") + (
                "." + extract if extract else "")
    _check_filename(filename)

    directory = cache_dir() / subdir
    if sha256 is None:
        # Unverified content: keep different URLs apart so one cannot answer for another.
        directory = directory / ("url-" + hashlib.sha256(url_text.encode()).hexdigest()[:16])
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename

    recorded = read_pins().get(url_text) if (pin and sha256 is None) else None
    expected_sha = sha256 or (recorded or {}).get("sha256")
    expected_size = size if size is not None else (recorded or {}).get("size")
    revalidate = expected_sha is None and md5 is None and local is None and not pin
    try:
        digest = _fetch_file(url_text, local, target, sha256=expected_sha, size=expected_size,
                             md5=md5, progress=progress, timeout=timeout, revalidate=revalidate)
    except ChecksumError as e:
        if recorded is None:
            raise
        raise ChecksumError(
            f"{e}. The expected sha256 was recorded at this unpinned file's first download "
            f"({recorded.get('recorded')}) in {pins_path()}; if the publisher replaced the file "
            "on purpose, delete its entry there") from None
    if pin and sha256 is None and recorded is None:
        _record_pin(url_text, digest, target.stat().st_size)
        warnings.warn(
            f"{url_text} is unpinned (its publisher gives no sha256): the sha256 of this first "
            f"download, {digest}, was recorded in {pins_path()} and every later use must match "
            "it", UnpinnedCheckpointWarning, stacklevel=2)
    elif sha256 is None and md5 is None and not pin and local is None:
        warnings.warn(
            f"{url_text} was fetched without a known sha256, so its content is unverified (its "
            f"sha256 is {digest}; to verify it, append '#sha256={digest}' to the URL, e.g. "
            "build(weights='<url>#sha256=...'), or list it in a weights manifest)",
            UnverifiedDownloadWarning, stacklevel=2)
    if extract is None:
        return target
    dest = _extract_cached(target, digest, extract)
    if member is None:
        return dest
    result = dest.joinpath(*_safe_relpath(member).parts)
    if not result.is_file():
        found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                       if p.is_file() and p.name != _EXTRACT_MARKER)
        raise ValueError(f"member {member!r} not found in archive {target.name}; "
                         f"it contains {found[:20]}")
    return result


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _meta_path(target: Path) -> Path:
    return target.with_name(target.name + ".meta.json")


def _fetch_file(url: str, local: Path | None, target: Path, *, sha256: str | None,
                size: int | None, progress: bool, timeout: float, md5: str | None = None,
                revalidate: bool = False) -> str:
    """Make `target` hold the verified bytes of `url`; return their sha256."""
    part = target.with_name(target.name + ".part")
    if target.is_file():
        actual_size = target.stat().st_size
        if size is not None and actual_size != size:
            logger.warning("cached %s has %d bytes, expected %d; downloading again",
                           target, actual_size, size)
            _unlink(target)
        else:
            digest, md5_digest = _digests(target)
            if (sha256 is None or digest == sha256) and (md5 is None or md5_digest == md5):
                if not revalidate:
                    logger.info("using cached %s", target)
                    return digest
                fresh = _revalidate(url, target, part, digest, progress=progress,
                                    timeout=timeout)
                return digest if fresh is None else fresh
            logger.warning("cached %s has sha256 %s / md5 %s, expected %s; downloading again",
                           target, digest, md5_digest, sha256 or md5)
            _unlink(target)
    elif target.exists():
        raise DownloadError(f"cache path {target} exists and is not a regular file")

    info = _Response()
    for attempt in range(2):
        resumed = part.is_file() and part.stat().st_size > 0 and local is None
        if local is not None:
            _copy_local(local, part, size=size, progress=progress, desc=target.name)
        else:
            info = _download_http(url, part, size=size, progress=progress, desc=target.name,
                                  timeout=timeout)
        problem = _content_problem(part, info.content_type, check_complete=sha256 is None)
        if problem is not None:
            _unlink(part)
            raise DownloadError(f"{url}: {problem}; nothing was kept in the cache")
        actual_size = part.stat().st_size
        digest, md5_digest = _digests(part)
        if size is not None and actual_size != size:
            problem = (f"size mismatch for {url}: got {actual_size} bytes, expected {size} "
                       "(truncated or wrong file)")
        elif sha256 is not None and digest != sha256:
            problem = f"sha256 mismatch for {url}: got {digest}, expected {sha256}"
        elif md5 is not None and md5_digest != md5:
            problem = f"md5 mismatch for {url}: got {md5_digest}, expected {md5} (published)"
        if problem is None:
            break
        _unlink(part)
        if resumed and attempt == 0:
            logger.warning("%s after resuming a partial download; restarting from zero", problem)
            continue
        raise ChecksumError(problem + "; nothing was kept in the cache")
    os.replace(part, target)
    _fsync_dir(target.parent)
    if revalidate:
        _write_json_atomic(_meta_path(target), {"url": url, "sha256": digest, "etag": info.etag,
                                                "last_modified": info.last_modified})
    return digest


def _revalidate(url: str, target: Path, part: Path, digest: str, *, progress: bool,
                timeout: float) -> str | None:
    """Ask the server whether an unverified cached copy is still current (a conditional GET
    with its ETag / Last-Modified); replace it when the URL now serves other bytes. Returns the
    new sha256, or None when the cached copy stays. Offline: the cached copy stays, with a
    warning."""
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
    _unlink(part)
    try:
        info = _download_http(url, part, size=None, progress=progress, desc=target.name,
                              timeout=timeout, extra_headers=headers)
    except DownloadError as e:
        _unlink(part)
        warnings.warn(f"could not check whether {url} changed ({e}); using the cached copy "
                      f"{target}", UnverifiedDownloadWarning, stacklevel=4)
        return None
    if info.status == 304:
        logger.info("cached %s is current (HTTP 304)", target)
        return None
    problem = _content_problem(part, info.content_type, check_complete=True)
    if problem is not None:
        _unlink(part)
        raise DownloadError(f"{url}: {problem}; the cached copy {target} was kept")
    new_digest, _ = _digests(part)
    if new_digest != digest:
        logger.warning("%s changed since it was cached (sha256 %s -> %s); using the new copy",
                       url, digest, new_digest)
    os.replace(part, target)
    _fsync_dir(target.parent)
    _write_json_atomic(_meta_path(target), {"url": url, "sha256": new_digest, "etag": info.etag,
                                            "last_modified": info.last_modified})
    return new_digest


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _content_problem(path: Path, content_type: str | None, *, check_complete: bool
                     ) -> str | None:
    """Why the downloaded bytes are not a usable file, or None.

    An HTML page (an error or log-in page served with status 200) is never a checkpoint. When
    no hash is known, a transfer that ended early without a Content-Length is only visible in
    the file itself: HDF5 records its length in the superblock, gzip has a trailer, zip a
    central directory at the end.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    sniff = head.lstrip().lower()
    if (content_type or "").split(";")[0].strip().lower() == "text/html" or sniff.startswith(
            (b"<!doctype html", b"<html")):
        return ("the server returned an HTML page (an error or log-in page?), not a weights "
                "file")
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
    elif head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path):
                pass
        except zipfile.BadZipFile as e:
            return f"the transfer ended early or the zip file is damaged ({e})"
    return None


def _hdf5_end_of_file(head: bytes) -> int | None:
    """The end-of-file address an HDF5 superblock declares (versions 0-3), or None."""
    version = head[8]
    try:
        if version in (0, 1):
            offsets = head[13]
            pos = 24 + (4 if version == 1 else 0)
            pos += 2 * offsets  # base address, free-space info address
        elif version in (2, 3):
            offsets = head[9]
            pos = 12 + 2 * offsets  # base address, superblock extension address
        else:
            return None
        return int.from_bytes(head[pos:pos + offsets], "little")
    except IndexError:
        return None


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm  # light, but only needed when downloading

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=not enabled, leave=True)


def _copy_local(source: Path, part: Path, *, size: int | None, progress: bool,
                desc: str) -> None:
    """Copy a local file into `part` (from zero: a local read cannot be interrupted usefully)."""
    try:
        total = source.stat().st_size
        if not source.is_file():
            raise DownloadError(f"{source} is not a regular file")
    except FileNotFoundError:
        raise DownloadError(f"local file not found: {source}") from None
    if size is not None and total != size:
        _unlink(part)
        raise ChecksumError(f"size mismatch for {source}: it has {total} bytes, expected {size} "
                            "(truncated or wrong file); nothing was kept in the cache")
    with open(source, "rb") as src, open(part, "wb") as dst, \
            _progress_bar(total, 0, desc, progress) as bar:
        for block in iter(lambda: src.read(_CHUNK), b""):
            dst.write(block)
            bar.update(len(block))
        dst.flush()
        os.fsync(dst.fileno())


_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """`bytes a-b/total` → (a, b, total); `bytes */total` → (None, None, total)."""
    if not value:
        return None, None, None
    m = _CONTENT_RANGE_RE.match(value)
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    end = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) not in (None, "*") else None
    return start, end, total


@dataclasses.dataclass
class _Response:
    """What a download learnt from the server besides the bytes."""

    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None


def _download_http(url: str, part: Path, *, size: int | None, progress: bool, desc: str,
                   timeout: float, extra_headers: dict[str, str] | None = None) -> _Response:
    """Download `url` into `part`, resuming from its current length with a Range request.

    Leaves `part` in place only when the connection dropped early (so a later call resumes);
    raises ChecksumError (and deletes `part`) when the server announces the wrong size or
    sends more than `size` bytes.
    """
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        _unlink(part)
        offset = 0
    if size is not None and offset == size and offset > 0:
        return _Response()  # complete from an earlier run that stopped before verifying
    headers = {"User-Agent": "mhmodels-weights/1", "Accept-Encoding": "identity",
               **(extra_headers or {})}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 304 and extra_headers:
                return _Response(status=304)
            if e.code == 416 and offset:
                _, _, total = _parse_content_range(e.headers.get("Content-Range"))
                if total == offset:
                    return _Response()  # the .part already holds the whole file
                logger.warning("server refused to resume %s at byte %d; restarting", url, offset)
                _unlink(part)
                return _download_http(url, part, size=size, progress=progress, desc=desc,
                                      timeout=timeout)
            raise DownloadError(f"HTTP {e.code} {e.reason} while downloading {url}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason}") from e

    with response:
        status = response.status
        info = _Response(status=status, etag=response.headers.get("ETag"),
                         last_modified=response.headers.get("Last-Modified"),
                         content_type=response.headers.get("Content-Type"))
        length_header = response.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else None
        except ValueError:
            length = None
        if status == 206 and offset:
            start, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                logger.warning("server resumed %s at byte %s instead of %d; restarting",
                               url, start, offset)
                response.close()
                _unlink(part)
                return _download_http(url, part, size=size, progress=progress, desc=desc,
                                      timeout=timeout)
            mode = "ab"
            if total is None and length is not None:
                total = offset + length
        elif status == 200:
            if offset:
                logger.info("server ignored the Range request for %s; restarting from zero", url)
                offset = 0
            mode = "wb"
            total = length
        else:
            raise DownloadError(f"unexpected HTTP status {status} while downloading {url}")
        if size is not None and total is not None and total != size:
            _unlink(part)
            raise ChecksumError(
                f"size mismatch for {url}: the server has {total} bytes, expected {size} "
                "(truncated or wrong file); nothing was kept in the cache")

        received = 0
        too_big = False
        failure: BaseException | None = None
        with open(part, mode) as f, _progress_bar(total, offset, desc, progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as e:
                    failure = e
                    break
                if not chunk:
                    break
                if size is not None and offset + received + len(chunk) > size:
                    too_big = True
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if too_big:
        _unlink(part)
        raise ChecksumError(f"{url} sent more than the expected {size} bytes; "
                            "nothing was kept in the cache")
    if failure is not None or (length is not None and received < length):
        have = offset + received
        expected = offset + length if length is not None else "?"
        raise DownloadError(
            f"download of {url} was interrupted after {have} of {expected} bytes"
            + (f" ({failure})" if failure is not None else "")
            + f"; the partial file {part} was kept and the next call resumes it")
    return info


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def _extract_dest(archive: Path, kind: str) -> Path:
    name = archive.name
    for suffix in ("." + kind, ".tgz", ".tar.gz", ".zip"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return archive.with_name(name[: -len(suffix)])
    return archive.with_name(name + "_extracted")


def _extract_cached(archive: Path, digest: str, kind: str) -> Path:
    """Extract `archive` once per content hash; a marker inside the directory records it."""
    dest = _extract_dest(archive, kind)
    marker = dest / _EXTRACT_MARKER
    if dest.is_dir() and marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("sha256") == digest:
                return dest
        except (OSError, ValueError):
            pass
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=archive.parent))
    try:
        if kind == "zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        (tmp / _EXTRACT_MARKER).write_text(json.dumps({"sha256": digest}), encoding="utf-8")
        old = None
        if dest.exists() or dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=archive.parent))
            os.replace(dest, old / "d")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(dest.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (ValueError, tarfile.TarError, zipfile.BadZipFile)):
            # A verified-but-unsafe (or broken) archive must not stay in the cache either.
            _unlink(archive)
            if not isinstance(e, ValueError):
                raise ValueError(f"cannot extract {archive.name}: {e}") from e
        raise
    return dest


def _inside(link_parent: PurePosixPath, target: str, links: set[PurePosixPath]) -> bool:
    """Whether a link at `link_parent` pointing to `target` stays inside the archive root
    (resolved lexically; going *through* another link in the archive is refused)."""
    if not target or target.startswith("/") or re.match(r"^[A-Za-z]:", target) or (
            "\x00" in target):
        return False
    parts: list[str] = list(link_parent.parts) if str(link_parent) != "." else []
    pieces = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")]
    for i, piece in enumerate(pieces):
        if piece == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(piece)
            if i < len(pieces) - 1 and PurePosixPath(*parts) in links:
                return False
    return True


def _validate_tar(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Refuse absolute names, `..`, special files, links leaving the root, and members written
    through a link (in any order); tarfile's 'data' filter then re-checks on disk."""
    members = tar.getmembers()
    paths = [_safe_relpath(info.name) for info in members]
    links = {rel for info, rel in zip(members, paths) if info.issym() or info.islnk()}
    for info, rel in zip(members, paths):
        for parent in rel.parents:
            if parent in links:
                raise ValueError(f"archive member {info.name!r} is written through the link "
                                 f"{parent}")
        if info.issym() or info.islnk():
            if sum(1 for other in paths if other == rel) > 1:
                raise ValueError(f"archive member {info.name!r} is a link that replaces another "
                                 "member of the same name (outside-pointing trick refused)")
            if info.issym():
                ok = _inside(rel.parent, info.linkname, links)
            else:  # hard links name a member, relative to the archive root
                try:
                    _safe_relpath(info.linkname)
                    ok = _inside(PurePosixPath("."), info.linkname, links)
                except ValueError:
                    ok = False
            if not ok:
                raise ValueError(f"archive member {info.name!r} links outside the destination "
                                 f"({info.linkname!r})")
        elif not (info.isfile() or info.isdir()):
            raise ValueError(f"archive member {info.name!r} is a device, fifo or other special "
                             "file")
    return members


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = _validate_tar(tar)
        if hasattr(tarfile, "data_filter"):  # defence in depth (Python >= 3.10.12 / 3.11.4)
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as e:
                raise ValueError(f"unsafe archive {archive.name}: {e}") from e
        else:
            tar.extractall(dest, members=members)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_relpath(info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                raise ValueError(f"archive member {info.filename!r} is a symlink; symlinks are "
                                 "not allowed in zip checkpoints")
        root = dest.resolve()
        for info in infos:
            rel = _safe_relpath(info.filename)
            out = dest.joinpath(*rel.parts)
            if not out.resolve().is_relative_to(root):
                raise ValueError(f"archive member {info.filename!r} escapes the destination")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


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
    for users who only need the on-device artefact and not TensorFlow."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, "
                         f"got {quantization!r}")
    ckpt = find_checkpoint(model, width, f"tflite_{quantization}", dataset=dataset,
                           resolution=resolution)
    return fetch_checkpoint(ckpt, progress=progress)
