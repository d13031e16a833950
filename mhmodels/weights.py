"""Pretrained checkpoints: trust-on-first-use pins, keras' cache, the download cache, `resolve`.

`mhmodels.build(name, weights=...)` and `mhmodels.download_tflite(...)` turn "imagenet", a path
or a URL into a local file known to be the one the manifest (`mhmodels.weights_manifest`, whose
names are re-exported here) promises. Ours: the sha256 recorded at the first download of files
whose publisher gives no hash (`pins.json`), the reuse of keras' own cache, `<url>#sha256=<hex>`
pinning, and `resolve`.
Delegated: the cache to pooch (`pooch.retrieve`: a temporary file beside the target, the sha256
or md5 check, a rename; a cached file that no longer matches is fetched again) and the GET to
requests. `_Transfer`, the downloader we hand pooch, adds what pooch's lacks: a minimum overall
rate, a progress bar that moves on every read, size checks, no resume, and refusing an HTML
page or (when no hash would catch it) an HDF5 file cut short. A URL with no known hash is
revalidated on each use (ETag / Last-Modified). Never imports TensorFlow, Keras or h5py;
tests/test_weights.py checks each guarantee against a server on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from mhmodels.files import _umask, atomic_write, read_json, user_home
from mhmodels.weights_manifest import (DATASET_RE, FORMATS, LOADABLE_FORMATS, NAME_RE,
                                       QUANTIZATIONS, SHA256_RE, SUFFIXES, URL_SCHEMES,
                                       Checkpoint, find_checkpoint, load_manifest,
                                       manifest_path)

__all__ = [
    "FORMATS", "QUANTIZATIONS", "LOADABLE_FORMATS", "Checkpoint", "ChecksumError",
    "DownloadError", "UnverifiedDownloadWarning", "UnpinnedCheckpointWarning", "Resolved",
    "resolve", "pin_status", "read_pins", "pins_path", "manifest_path", "load_manifest",
    "find_checkpoint", "cache_dir", "fetch", "fetch_checkpoint", "resolve_weights",
    "download_tflite", "SUFFIXES",
]

logger = logging.getLogger(__name__)

PINS_FILE = "pins.json"
DEFAULT_TIMEOUT = 60.0  # seconds: connect / per read, and the window of the minimum rate
MIN_RATE = 1024  # bytes/s over each DEFAULT_TIMEOUT window, or the transfer is abandoned
_CHUNK = 1 << 16


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


# ---- Cache and trust-on-first-use pins ----


def cache_dir() -> Path:
    """Root of the download cache: the user's mhmodels home (`$MHMODELS_HOME`)."""
    return user_home()


def pins_path() -> Path:
    """Where the sha256 of unpinned checkpoints is recorded at their first download."""
    return cache_dir() / PINS_FILE


def read_pins() -> dict[str, dict]:
    """{url: {'sha256', 'size', 'recorded'}} of every unpinned file downloaded so far."""
    try:
        pins = read_json(pins_path(), "the record of unpinned downloads", "fix or delete it")
    except FileNotFoundError:
        return {}
    if not isinstance(pins, dict):
        raise ValueError(f"{pins_path()} must hold a JSON object; fix or delete it")
    return pins


def _record_pin(url: str, path: Path, what: str) -> None:
    """Trust on first use: record the sha256 of `path` for `url`, and say so."""
    digest = _sha256(path)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pins = {**read_pins(), url: {"sha256": digest, "size": path.stat().st_size, "recorded": now}}
    pins_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write(pins_path(), json.dumps(pins, indent=1, sort_keys=True))
    warnings.warn(f"{url} is unpinned (its publisher gives no sha256): the sha256 of {what}, "
                  f"{digest}, was recorded in {pins_path()} and every later use must match it",
                  UnpinnedCheckpointWarning, stacklevel=4)


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


def _sha256(path: Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def _known_hash(sha256: str | None, md5: str | None) -> str | None:
    """pooch's `known_hash` ('sha256:<hex>' / 'md5:<hex>') or None."""
    return f"sha256:{sha256}" if sha256 else (f"md5:{md5}" if md5 else None)


# ---- fetch: URLs and local files into the verified cache ----


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme.lower() in URL_SCHEMES


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
                         f"expected one of {list(URL_SCHEMES)} or a local path")
    return Path(url)


def _split_sha256(url: str, sha256: str | None = None) -> tuple[str, str | None]:
    """'https://h/x.h5#sha256=<hex>' -> ('https://h/x.h5', '<hex>') (pip's URL convention),
    agreeing with an explicit `sha256`, which is validated."""
    base, sep, fragment = url.partition("#") if _is_url(url) else (url, "", "")
    if sep:
        m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
        if not m:
            raise ValueError(f"URL fragment {fragment!r} in {url!r} is not "
                             "'#sha256=<64 hex digits>'")
        if sha256 is not None and sha256.lower() != m.group(1).lower():
            raise ValueError(f"sha256={sha256!r} disagrees with the URL's #sha256= fragment")
        sha256 = m.group(1)
    sha256 = sha256.lower() if sha256 is not None else None
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return base, sha256


def fetch(url: str | os.PathLike, sha256: str | None = None, size: int | None = None, *,
          cache_subdir: str = "checkpoints", filename: str | None = None,
          progress: bool = True, timeout: float = DEFAULT_TIMEOUT, min_rate: float = MIN_RATE,
          md5: str | None = None, pin: bool = False) -> Path:
    """Return a verified local copy of `url` (http(s)://, file:// or a local path) in the cache.

    The file lands in `<cache>/<cache_subdir>/sha256-<hex16>/` when its sha256 is known (the
    argument or a '#sha256=<hex>' URL fragment), else in `.../url-<hex16>/`. A transfer is
    abandoned when a read waits `timeout` seconds or when fewer than `min_rate` bytes/s arrive
    over any `timeout`-second window.

    Without a sha256: `pin=True` (manifest checkpoints whose publisher gives no hash) records
    the first download's sha256 in `pins_path()` and makes every later use match it; `md5`
    checks a published md5 (keras.applications' MobileNetV3 files); otherwise the copy is
    unverified and is revalidated with the server (ETag / Last-Modified) on each call.
    """
    url, sha256 = _split_sha256(os.fspath(url), sha256)
    local = _local_source(url)
    name = filename or (local.name if local is not None else posixpath.basename(
        urllib.parse.unquote(urllib.parse.urlsplit(url).path)))
    if not NAME_RE.match(name):
        if filename:
            raise ValueError(f"invalid cache file name {filename!r}")
        name = "download"
    if not NAME_RE.match(cache_subdir):
        raise ValueError(f"invalid cache_subdir {cache_subdir!r}")
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()
    target = cache_dir() / cache_subdir / f"{'sha256' if sha256 else 'url'}-{key[:16]}" / name
    recorded = read_pins().get(url, {}) if pin and sha256 is None else {}
    known = _known_hash(sha256 or recorded.get("sha256"), md5)
    transfer = _Transfer(target.name, size=size if size is not None else recorded.get("size"),
                         check_complete=known is None, progress=progress, timeout=timeout,
                         min_rate=min_rate)
    unverified = known is None and not pin and local is None
    try:
        if unverified:
            _refresh(url, target, transfer)
        else:
            _retrieve(url, target, known, transfer)
    except BaseException as e:
        _prune_empty(target.parent)
        if isinstance(e, ChecksumError) and recorded:
            raise ChecksumError(
                f"{e}. The expected sha256 was recorded at this unpinned file's first download "
                f"({recorded.get('recorded')}) in {pins_path()}; if the publisher replaced the "
                "file on purpose, delete its entry there") from None
        raise
    if pin and known is None:
        _record_pin(url, target, "this first download")
    elif unverified:
        digest = _sha256(target)
        warnings.warn(
            f"{url} was fetched without a known sha256, so its content is unverified (its "
            f"sha256 is {digest}; to verify it, append '#sha256={digest}' to the URL, e.g. "
            "build(weights='<url>#sha256=...'), or list it in a weights manifest)",
            UnverifiedDownloadWarning, stacklevel=2)
    return target


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


@contextlib.contextmanager
def _pooch():
    """pooch, with its INFO lines (one per download, on stderr) off while we use it."""
    import pooch

    log = pooch.get_logger()
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield pooch
    finally:
        log.setLevel(level)


def _retrieve(url: str, target: Path, known: str | None, transfer: "_Transfer") -> None:
    """`pooch.retrieve` into `target`: a cached copy is kept when it matches `known`, a
    download is checked in a temporary file and renamed into place."""
    with _pooch() as pooch:
        try:
            pooch.retrieve(url, known_hash=known, fname=target.name, path=target.parent,
                           downloader=transfer)
        except (ChecksumError, DownloadError) as e:
            raise type(e)(f"{e}; nothing was kept in the cache") from None
        except ValueError as e:  # pooch's hash check (it deleted the file)
            raise ChecksumError(f"{known.split(':')[0]} mismatch for {url}: {e}") from None
    if transfer.arrived:
        os.chmod(target, 0o666 & ~_umask())  # pooch's temporary file was private (0600)


def _refresh(url: str, target: Path, transfer: "_Transfer") -> None:
    """An unverified URL, fetched on each use: a conditional GET (the cached copy's ETag /
    Last-Modified) into a temporary file renamed over the copy. Offline, the cached copy stays,
    with a warning; a response that is not a weights file raises and keeps it."""
    meta_path = target.with_name(target.name + ".meta.json")
    cached = target.is_file()
    if cached:  # ask "changed since?" only for the copy the meta file describes
        with contextlib.suppress(OSError, ValueError, AttributeError):  # else: a full GET
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("sha256") == _sha256(target):
                transfer.headers = {h: meta[k] for h, k in (("If-None-Match", "etag"),
                                                            ("If-Modified-Since", "last_modified"))
                                    if meta.get(k)}
    target.parent.mkdir(parents=True, exist_ok=True)
    with _pooch() as pooch, pooch.utils.temporary_file(str(target.parent)) as tmp:
        try:
            transfer(url, tmp)
        except DownloadError as e:
            if not cached:
                raise DownloadError(f"{e}; nothing was kept in the cache") from None
            if transfer.arrived:
                raise DownloadError(f"{e}; the cached copy {target} was kept") from None
            warnings.warn(f"could not check whether {url} changed ({e}); using the cached copy "
                          f"{target}", UnverifiedDownloadWarning, stacklevel=4)
            return
        if transfer.not_modified:
            return
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    got = transfer.response_headers
    atomic_write(meta_path, json.dumps({"url": url, "sha256": _sha256(target), "etag": got.get(
        "ETag"), "last_modified": got.get("Last-Modified")}, indent=1, sort_keys=True))


def _error_reason(error: BaseException) -> str:
    """The useful part of a requests error ('[Errno 111] Connection refused', not the pool's
    whole repr)."""
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error))
    return m.group(0).strip() if m else str(error)


class _Transfer:
    """The pooch downloader: one GET (or a local copy) into pooch's temporary file.

    Beyond requests' per-read timeout it abandons a transfer slower than `min_rate` bytes/s
    over any `timeout`-second window; it updates the progress bar on every read (read1: what
    has arrived), checks the announced and received sizes, and refuses an HTML page or (with
    no hash to check it) an HDF5 file cut short. It never resumes: every call starts at 0."""

    def __init__(self, name: str, *, size: int | None, check_complete: bool, progress: bool,
                 timeout: float, min_rate: float):
        self.name, self.size, self.check_complete = name, size, check_complete
        self.progress, self.timeout, self.min_rate = progress, timeout, min_rate
        self.headers: dict[str, str] = {}  # conditional GET headers (see _refresh)
        self.response_headers: dict[str, str] = {}
        self.not_modified = False  # a conditional GET answered 304
        self.arrived = False  # the whole body arrived (later errors are about its content)

    def __call__(self, url: str, output_file: str, pooch=None) -> None:
        local = _local_source(url)
        with open(output_file, "wb") as out:
            if local is None:
                self._get(url, out)
            elif local.is_file():
                with open(local, "rb") as src:
                    self._stream(str(local), src.read, out, local.stat().st_size)
            else:
                raise DownloadError(f"local file not found: {local}" if not local.exists()
                                    else f"{local} is not a regular file")
            out.flush()
            os.fsync(out.fileno())
        if self.not_modified:
            return
        self.arrived = True
        got = os.path.getsize(output_file)
        if self.size is not None and got != self.size:
            raise ChecksumError(f"size mismatch for {url}: got {got} bytes, expected "
                                f"{self.size} (truncated or wrong file)")
        problem = _content_problem(Path(output_file), self.response_headers.get("Content-Type"),
                                   check_complete=self.check_complete)
        if problem is not None:
            raise DownloadError(f"{url}: {problem}")

    def _get(self, url: str, out) -> None:
        import requests

        headers = {"User-Agent": "mhmodels-weights/3", "Accept-Encoding": "identity",
                   **self.headers}
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.TooManyRedirects:
            raise DownloadError(f"{url} redirects in a loop (more than 30 redirects)") from None
        except requests.RequestException as e:
            raise DownloadError(f"could not download {url}: {_error_reason(e)}") from None
        with response:
            self.response_headers = response.headers
            self.not_modified = response.status_code == 304 and bool(self.headers)
            if self.not_modified:
                return
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code} {response.reason} while "
                                    f"downloading {url}")
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            self._stream(url, getattr(response.raw, "read1", response.raw.read), out, total)

    def _stream(self, url: str, read, out, total: int | None) -> None:
        from tqdm import tqdm

        if self.size is not None and total is not None and total != self.size:
            raise ChecksumError(f"size mismatch for {url}: it has {total} bytes, expected "
                                f"{self.size} (truncated or wrong file)")
        received, failure = 0, None
        window_start, window_bytes = time.monotonic(), 0
        with tqdm(total=total, desc=self.name, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, disable=not self.progress, leave=True) as bar:
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
    the file itself: HDF5 records its end-of-file address in the superblock (versions 0-3).
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if (content_type or "").split(";")[0].strip().lower() == "text/html" or (
            head.lstrip().lower().startswith((b"<!doctype html", b"<html"))):
        return "the server returned an HTML page (an error or log-in page?), not a weights file"
    if not (check_complete and head.startswith(_HDF5_SIGNATURE)):
        return None
    size = path.stat().st_size
    if len(head) < 14:
        return f"the transfer ended early ({size} bytes of an HDF5 file)"
    version = head[8]
    if version > 3:
        return None
    offsets = head[13] if version < 2 else head[9]  # then base, free-space / extension addresses
    pos = (24 + 4 * version if version < 2 else 12) + 2 * offsets
    eof = int.from_bytes(head[pos:pos + offsets], "little")
    if len(head) < pos + offsets or eof > size:
        return (f"the transfer ended early: the HDF5 file declares {eof} bytes but only "
                f"{size} arrived")
    return None


# ---- Entry points used by build() and download_tflite() ----


def fetch_checkpoint(ckpt: Checkpoint, *, progress: bool = True) -> Path:
    """Download (or find in the cache) a manifest checkpoint and return its file.

    A keras.applications file that keras itself already downloaded is used in place (after the
    same verification), so the two caches never hold the file twice.
    """
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    mirror = keras_home / "models" / ckpt.cache_filename  # where keras caches it
    if ckpt.format == "keras_h5" and mirror.is_file():
        import pooch

        recorded = read_pins().get(ckpt.url, {}).get("sha256")
        alg, want = (("md5", ckpt.md5) if ckpt.md5 and not ckpt.sha256
                     else ("sha256", ckpt.sha256 or recorded))
        if want in (None, pooch.file_hash(str(mirror), alg=alg)) and _content_problem(
                mirror, None, check_complete=want is None) is None:
            if want is None:
                _record_pin(ckpt.url, mirror, f"keras's cached copy {mirror}")
            logger.info("using keras's cached %s", mirror)
            return mirror
        logger.warning("keras's cached %s does not match the manifest; downloading our own "
                       "copy", mirror)
    return fetch(ckpt.url, ckpt.sha256, ckpt.size, cache_subdir="checkpoints",
                 filename=ckpt.cache_filename, progress=progress, md5=ckpt.md5,
                 pin=not ckpt.pinned)


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
        url = _split_sha256(weights)[0]
        known = next((c for c in load_manifest() if c.url == url), None)
        if known is not None:
            return Resolved(fetch_checkpoint(known, progress=progress), known)
        return Resolved(fetch(weights, cache_subdir="checkpoints", progress=progress))
    if DATASET_RE.match(weights):
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
