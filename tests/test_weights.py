"""Tests of mhmodels.weights against a real HTTP server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mhmodels import weights as W

ROOT = Path(__file__).resolve().parents[1]

DATA = random.Random(1234).randbytes(300_000)  # several 64 KiB chunks
SHA = hashlib.sha256(DATA).hexdigest()


# --------------------------------------------------------------------------------------------
# Local HTTP server: Range support (which the client must never use), "drop the connection",
# "no Content-Length", "trickle", "interrupt the client" and redirect modes
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send_empty(self, status: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        srv = self.server
        range_header = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, range_header))
        if self.path in srv.redirects:
            self._send_empty(302, {"Location": srv.redirects[self.path]})
            return
        data = srv.files.get(self.path)
        if data is None:
            self._send_empty(404)
            return
        etag = srv.etags.get(self.path)
        if etag is not None and self.headers.get("If-None-Match") == etag:
            self._send_empty(304, {"ETag": etag})
            return
        if srv.no_length:  # HTTP/1.0 style: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", srv.content_type)
            self.send_header("Connection", "close")
            self.end_headers()
            body = data if srv.truncate_at is None else data[: srv.truncate_at]
            self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()
            with srv.lock:
                srv.sent_per_request.append(len(body))
            return
        start, status = 0, 200
        if range_header and not srv.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert m, range_header
            start = int(m.group(1))
            if start >= len(data):
                self._send_empty(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", srv.content_type)
        if etag is not None:
            self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if srv.trickle is not None:  # (bytes, seconds): a few bytes at a time
            step, pause = srv.trickle
            for i in range(0, len(body), step):
                if srv.stop.is_set():
                    break
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(pause)
            self.close_connection = True
            return
        if srv.truncate_at is not None:
            body = body[: srv.truncate_at]  # announce everything, send part, hang up
            self.close_connection = True
        if srv.interrupt_client:  # send part, then hold on while the test Ctrl-C's the client
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            srv.partial_sent.set()
            srv.stop.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)
        self.wfile.flush()
        with srv.lock:
            srv.bytes_sent += len(body)
            srv.sent_per_request.append(len(body))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.sent_per_request: list[int] = []
        self.bytes_sent = 0
        self.ignore_range = False
        self.truncate_at: int | None = None
        self.no_length = False
        self.content_type = "application/octet-stream"
        self.etags: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.trickle: tuple[int, float] | None = None
        self.interrupt_client = False
        self.partial_sent = threading.Event()  # an interrupted response sent its first part
        self.stop = threading.Event()  # ends trickles and interrupted responses

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Cache in tmp_path, no proxies (127.0.0.1 must be reached directly), no manifest override."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MHMODELS_WEIGHTS_MANIFEST", raising=False)
    return tmp_path / "cache"


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def cache_entries(cache: Path) -> list[Path]:
    """Files and directories: a failed download must not leave empty directories either."""
    return sorted(cache.rglob("*")) if cache.exists() else []


def pinned_path(cache: Path, digest: str, name: str, subdir: str = "checkpoints") -> Path:
    return cache / subdir / f"sha256-{digest[:16]}" / name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# fetch over HTTP
# --------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_places_atomically(server, isolated_env):
    server.files["/w/model.weights.h5"] = DATA
    path = W.fetch(server.url("/w/model.weights.h5"), SHA, len(DATA), progress=False)
    assert path == pinned_path(isolated_env, SHA, "model.weights.h5")
    assert path.read_bytes() == DATA
    assert server.requests == [("/w/model.weights.h5", None)]
    assert server.bytes_sent == len(DATA)
    assert cache_files(isolated_env) == [path]  # no .part, no temp files
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not pooch's 0600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_fetch_progress_bar_goes_to_stderr(server, capsys):
    server.files["/p.bin"] = DATA
    W.fetch(server.url("/p.bin"), SHA, len(DATA), progress=True)
    err = capsys.readouterr().err
    assert "p.bin" in err and "100%" in err
    W.fetch(server.url("/p.bin"), SHA, len(DATA), cache_subdir="other", progress=False)
    assert capsys.readouterr().err == ""


def test_cache_hit_does_not_contact_server_and_bad_cache_is_replaced(server, isolated_env):
    server.files["/c.bin"] = DATA
    first = W.fetch(server.url("/c.bin"), SHA, len(DATA), progress=False)
    second = W.fetch(server.url("/c.bin"), SHA, len(DATA), progress=False)
    assert first == second and len(server.requests) == 1
    # A cached file that no longer matches its sha256 is deleted and downloaded again.
    corrupted = bytearray(DATA)
    corrupted[1000] ^= 0xFF
    first.write_bytes(bytes(corrupted))
    third = W.fetch(server.url("/c.bin"), SHA, len(DATA), progress=False)
    assert third.read_bytes() == DATA
    assert len(server.requests) == 2 and server.bytes_sent == 2 * len(DATA)


def test_corrupted_download_raises_checksum_error_and_leaves_nothing(server, isolated_env):
    corrupted = bytearray(DATA)
    corrupted[150_000] ^= 0x01
    server.files["/bad.bin"] = bytes(corrupted)
    with pytest.raises(W.ChecksumError, match="sha256 mismatch"):
        W.fetch(server.url("/bad.bin"), SHA, len(DATA), progress=False)
    assert server.bytes_sent == len(DATA)
    assert cache_files(isolated_env) == []


@pytest.mark.parametrize("with_size", [True, False])
def test_truncated_file_is_an_error_and_leaves_nothing(server, isolated_env, with_size):
    server.files["/short.bin"] = DATA[:200_000]  # the served file itself is truncated
    size = len(DATA) if with_size else None
    with pytest.raises(W.ChecksumError, match="size mismatch" if with_size else "sha256"):
        W.fetch(server.url("/short.bin"), SHA, size, progress=False)
    assert cache_files(isolated_env) == []


def test_interrupted_download_leaves_nothing_and_next_call_starts_from_zero(server,
                                                                             isolated_env):
    server.files["/big.bin"] = DATA
    server.truncate_at = 100_000
    with pytest.raises(W.DownloadError, match="interrupted after 100000 of 300000 bytes"):
        W.fetch(server.url("/big.bin"), SHA, len(DATA), progress=False)
    assert cache_entries(isolated_env) == []  # no .part, no temporary file, no directory
    server.truncate_at = None
    path = W.fetch(server.url("/big.bin"), SHA, len(DATA), progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == [("/big.bin", None), ("/big.bin", None)]  # never a Range
    assert server.sent_per_request == [100_000, len(DATA)]


def test_ctrl_c_then_another_file_of_the_same_size_is_never_spliced(server, isolated_env):
    """Issue 23.1: a .part left by Ctrl-C was resumed with a Range request and no validator
    after the URL started serving another file of the same size; the spliced file (hashing to
    neither) was cached and its meta recorded the new ETag."""
    other = random.Random(99).randbytes(len(DATA))
    server.files["/s.bin"] = DATA
    server.etags["/s.bin"] = '"one"'
    server.interrupt_client = True
    # A real Ctrl-C, of a real process (pytest-xdist workers do not turn SIGINT into
    # KeyboardInterrupt): the fetch is unpinned, so no hash could catch a splice.
    proc = subprocess.Popen(
        # Python's own Ctrl-C handler, whatever SIGINT disposition the worker passed down (an
        # inherited SIG_IGN left the client waiting out the server: seen in a full run)
        [sys.executable, "-c", "import signal, sys; "
         "signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from mhmodels import weights as W; W.fetch(sys.argv[1], progress=False)",
         server.url("/s.bin")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.partial_sent.wait(120), "the download never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        server.stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    assert cache_entries(isolated_env) == []
    server.interrupt_client = False
    server.files["/s.bin"] = other
    server.etags["/s.bin"] = '"two"'
    with pytest.warns(W.UnverifiedDownloadWarning, match=sha(other)):
        path = W.fetch(server.url("/s.bin"), progress=False)
    assert sha(path.read_bytes()) == sha(other)
    assert [r for _, r in server.requests] == [None, None]
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
    assert meta["etag"] == '"two"' and meta["sha256"] == sha(other)


def test_stray_part_file_is_never_used(server, isolated_env):
    """A `.part` from an older mhmodels (which resumed) is ignored, not spliced."""
    server.files["/g.bin"] = DATA
    key = pinned_path(isolated_env, SHA, "g.bin")
    key.parent.mkdir(parents=True)
    key.with_name("g.bin.part").write_bytes(b"\0" * 70_000)
    assert W.fetch(server.url("/g.bin"), SHA, len(DATA), progress=False).read_bytes() == DATA
    assert server.requests == [("/g.bin", None)]


def test_trickling_download_is_abandoned_and_leaves_nothing(server, isolated_env):
    """Issue 23.5: a server sending a few bytes a second never timed out (the limit was per
    read); a minimum rate over each `timeout` window now ends it."""
    server.files["/slow.bin"] = DATA[:20_000]
    server.trickle = (10, 0.01)  # ~1 kB/s
    start = time.monotonic()
    with pytest.raises(W.DownloadError, match=r"stalled: \d+ bytes/s over the last 0\.\d s "
                       r"\(minimum 5000 bytes/s\)"):
        W.fetch(server.url("/slow.bin"), sha(DATA[:20_000]), 20_000, progress=False,
                timeout=0.4, min_rate=5000)
    assert time.monotonic() - start < 3  # the whole body would take ~20 s
    assert cache_entries(isolated_env) == []


def test_progress_bar_moves_on_every_read(server, capsys):
    """Issue 23.5: the bar was updated per 64 KiB read, so a slow download froze it (and its
    ETA); it now moves with every read that returns bytes."""
    body = DATA[:4_000]
    server.files["/t.bin"] = body
    server.trickle = (200, 0.04)  # 20 pieces over ~0.8 s
    W.fetch(server.url("/t.bin"), sha(body), len(body), progress=True, min_rate=0)
    states = set(re.findall(r"(\d+(?:\.\d+)?k?)/3\.91k", capsys.readouterr().err))
    assert len(states) >= 4, states  # more than start (0) and end (3.91k)


def test_same_file_name_with_two_hashes_are_cached_apart(server, isolated_env):
    """Issue 23.5: two hash-pinned URLs with the same file name shared one cache file and
    evicted each other on every use."""
    other = DATA[::-1]
    server.files["/a/w.h5"] = DATA
    server.files["/b/w.h5"] = other
    a = W.fetch(server.url("/a/w.h5") + f"#sha256={SHA}", progress=False)
    b = W.fetch(server.url("/b/w.h5") + f"#sha256={sha(other)}", progress=False)
    assert a == pinned_path(isolated_env, SHA, "w.h5") and a != b
    assert W.fetch(server.url("/a/w.h5") + f"#sha256={SHA}", progress=False) == a
    assert a.read_bytes() == DATA and b.read_bytes() == other
    assert len(server.requests) == 2  # the third call was a cache hit


def test_redirect_loop_is_a_one_line_error(server, isolated_env):
    server.redirects["/loop"] = "/loop"
    with pytest.raises(W.DownloadError, match=r"redirects in a loop") as err:
        W.fetch(server.url("/loop"), SHA, progress=False)
    assert "\n" not in str(err.value)
    assert cache_entries(isolated_env) == []


def test_http_error_is_download_error_and_leaves_nothing(server, isolated_env):
    with pytest.raises(W.DownloadError, match="HTTP 404"):
        W.fetch(server.url("/missing.bin"), SHA, len(DATA), progress=False)
    with pytest.raises(W.DownloadError, match="HTTP 404"):
        W.fetch(server.url("/missing.bin"), progress=False)
    assert cache_entries(isolated_env) == []  # issue 23.5: no empty directories either


def test_unverified_url_warns_and_is_cached_per_url(server, isolated_env):
    server.files["/a/x.bin"] = b"first"
    server.files["/b/x.bin"] = b"second"
    with pytest.warns(W.UnverifiedDownloadWarning, match=sha(b"first")):
        a = W.fetch(server.url("/a/x.bin"), progress=False)
    with pytest.warns(W.UnverifiedDownloadWarning):
        b = W.fetch(server.url("/b/x.bin"), progress=False)
    assert a != b and a.read_bytes() == b"first" and b.read_bytes() == b"second"
    assert len(server.requests) == 2
    # A later call asks the server again (no ETag here: a full GET) and sees the same bytes.
    with pytest.warns(W.UnverifiedDownloadWarning, match=r"#sha256="):
        assert W.fetch(server.url("/a/x.bin"), progress=False) == a
    assert len(server.requests) == 3 and a.read_bytes() == b"first"


def test_unverified_warning_names_a_way_that_exists_and_it_verifies(server, isolated_env):
    """Issue 16.7: the warning said 'pass sha256=' which build() does not take; it now says
    '#sha256=' on the URL, which fetch and build(weights=...) honour."""
    server.files["/u/w.bin"] = DATA
    with pytest.warns(W.UnverifiedDownloadWarning) as record:
        W.fetch(server.url("/u/w.bin"), progress=False)
    message = str(record[0].message)
    assert "pass sha256=" not in message and f"#sha256={SHA}" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified now: no warning
        path = W.resolve_weights("multi_max", 1.0, server.url("/u/w.bin") + f"#sha256={SHA}",
                                 progress=False)
    assert path.read_bytes() == DATA
    with pytest.raises(W.ChecksumError, match="sha256 mismatch"):
        W.fetch(server.url("/u/w.bin") + "#sha256=" + "0" * 64, cache_subdir="o",
                progress=False)
    with pytest.raises(ValueError, match="not '#sha256="):
        W.fetch(server.url("/u/w.bin") + "#md5=abc", progress=False)


def test_changed_unverified_url_is_fetched_again(server, isolated_env):
    """Issue 16.7: an unverified cached copy used to be reused forever."""
    server.files["/c/w.bin"] = b"version one"
    server.etags["/c/w.bin"] = '"v1"'
    with pytest.warns(W.UnverifiedDownloadWarning):
        first = W.fetch(server.url("/c/w.bin"), progress=False)
    with pytest.warns(W.UnverifiedDownloadWarning):
        assert W.fetch(server.url("/c/w.bin"), progress=False) == first
    assert server.sent_per_request == [len(b"version one")]  # second call: 304, no body
    server.files["/c/w.bin"] = b"version two!"
    server.etags["/c/w.bin"] = '"v2"'
    with pytest.warns(W.UnverifiedDownloadWarning, match=sha(b"version two!")):
        again = W.fetch(server.url("/c/w.bin"), progress=False)
    assert again == first and again.read_bytes() == b"version two!"
    server.shutdown()  # offline: the cached copy is used, with a warning that says so
    server.server_close()
    with pytest.warns(W.UnverifiedDownloadWarning) as record:
        assert W.fetch(server.url("/c/w.bin"), progress=False).read_bytes() == b"version two!"
    assert any("could not check" in str(w.message) for w in record), record


def _hdf5_bytes(tmp_path: Path) -> bytes:
    import h5py
    import numpy as np

    path = tmp_path / "src.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.arange(50_000, dtype=np.float32)
    return path.read_bytes()


def test_no_content_length_early_close_is_not_cached(server, isolated_env, tmp_path):
    """Issue 16.7: with no Content-Length a dropped connection looks like the end of the file;
    the truncated file used to be cached under its final name and reused by every call."""
    data = _hdf5_bytes(tmp_path)
    server.files["/n/model.h5"] = data
    server.no_length = True
    server.truncate_at = len(data) // 2
    with pytest.raises(W.DownloadError, match=r"ended early.*declares \d+ bytes"):
        W.fetch(server.url("/n/model.h5"), progress=False)
    assert cache_files(isolated_env) == []
    server.truncate_at = None
    with pytest.warns(W.UnverifiedDownloadWarning):
        path = W.fetch(server.url("/n/model.h5"), progress=False)
    assert path.read_bytes() == data


@pytest.mark.parametrize("content_type, body", [
    ("text/html; charset=utf-8", b"<p>Service unavailable</p>"),
    ("application/octet-stream", b"\n <!DOCTYPE html><html><body>Sign in</body></html>"),
])
def test_html_error_page_is_not_cached(server, isolated_env, content_type, body):
    """Issue 16.7: an HTML error page served with status 200 was cached as 'download'."""
    server.files["/"] = body
    server.content_type = content_type
    with pytest.raises(W.DownloadError, match="HTML page"):
        W.fetch(server.url("/"), progress=False)
    assert cache_files(isolated_env) == []


def test_unpinned_manifest_file_records_sha256_and_later_uses_must_match(
        server, isolated_env, tmp_path, monkeypatch):
    server.files["/k/mobilenet_1_0_224_tf.h5"] = DATA
    entry = {"model": "mobilenet_v1", "width": 1.0, "format": "keras_h5",
             "dataset": "imagenet", "url": server.url("/k/mobilenet_1_0_224_tf.h5"),
             "sha256": None, "size": None, "resolution": 224, "classes": 1000,
             "source": "keras_applications"}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format_version": 1, "checkpoints": [entry]}))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    ckpt = W.find_checkpoint("mobilenet_v1", 1.0, "keras_h5")
    assert not ckpt.pinned and W.pin_status(ckpt).startswith("unpinned")
    with pytest.warns(W.UnpinnedCheckpointWarning, match=f"unpinned.*{SHA}"):
        got = W.resolve("mobilenet_v1", 1.0, "imagenet", progress=False)
    assert got.path.name == "mobilenet_1_0_224_tf.h5" and got.checkpoint == ckpt
    assert W.read_pins()[entry["url"]]["sha256"] == SHA
    assert "recorded 20" in W.pin_status(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second use is verified against the record
        assert W.resolve_weights("mobilenet_v1", 1.0, "imagenet", progress=False) == got.path
    got.path.unlink()
    server.files["/k/mobilenet_1_0_224_tf.h5"] = DATA[::-1]  # the publisher's file changed
    with pytest.raises(W.ChecksumError, match="recorded at this unpinned file's first"):
        W.resolve_weights("mobilenet_v1", 1.0, "imagenet", progress=False)
    assert not got.path.exists()


def test_keras_cached_file_is_used_without_download(server, isolated_env, tmp_path,
                                                    monkeypatch):
    data = _hdf5_bytes(tmp_path)
    entry = {"model": "mobilenet_v3_small", "width": 1.0, "format": "keras_h5",
             "dataset": "imagenet", "sha256": None, "size": None,
             "url": server.url("/v3/weights_mobilenet_v3_small_224_1.0_float.h5"),
             "md5": hashlib.md5(data).hexdigest(), "resolution": 224, "classes": 1000,
             "source": "keras_applications"}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format_version": 1, "checkpoints": [entry]}))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(path))
    keras_models = tmp_path / "keras_home" / "models"
    keras_models.mkdir(parents=True)
    (keras_models / "weights_mobilenet_v3_small_224_1.0_float.h5").write_bytes(data)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # md5-pinned: no warning
        got = W.resolve_weights("mobilenet_v3_small", 1.0, "imagenet", progress=False)
    assert got.parent == keras_models and server.requests == []
    (keras_models / got.name).write_bytes(data[:-1] + b"x")  # damaged: download our own
    server.files["/v3/weights_mobilenet_v3_small_224_1.0_float.h5"] = data
    got = W.resolve_weights("mobilenet_v3_small", 1.0, "imagenet", progress=False)
    assert got.is_relative_to(isolated_env) and got.read_bytes() == data


def test_unpinned_keras_cached_file_is_pinned_on_first_use(server, tmp_path, monkeypatch):
    """keras publishes no hash for its V1/V2 files: the copy keras cached is used in place, its
    sha256 recorded like a first download's, and a later change of it is never trusted."""
    data = _hdf5_bytes(tmp_path)
    entry = {"model": "mobilenet_v1", "width": 1.0, "format": "keras_h5", "dataset": "imagenet",
             "url": server.url("/k/mobilenet_1_0_224_tf.h5"), "sha256": None, "size": None,
             "resolution": 224, "classes": 1000, "source": "keras_applications"}
    (tmp_path / "m.json").write_text(json.dumps({"format_version": 1, "checkpoints": [entry]}))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(tmp_path / "m.json"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    mirror = tmp_path / "keras_home" / "models" / "mobilenet_1_0_224_tf.h5"
    mirror.parent.mkdir(parents=True)
    mirror.write_bytes(data[: len(data) // 2])  # a copy cut short is never trusted
    server.files["/k/mobilenet_1_0_224_tf.h5"] = data
    with pytest.warns(W.UnpinnedCheckpointWarning, match="this first download"):
        assert W.resolve_weights("mobilenet_v1", 1.0, "imagenet", progress=False) != mirror
    W.pins_path().unlink()
    mirror.write_bytes(data)
    with pytest.warns(W.UnpinnedCheckpointWarning, match="keras's cached copy"):
        assert W.resolve_weights("mobilenet_v1", 1.0, "imagenet", progress=False) == mirror
    assert W.read_pins()[entry["url"]]["sha256"] == sha(data)
    mirror.write_bytes(data[:-1] + b"x")  # changed after it was pinned: our verified copy
    got = W.resolve_weights("mobilenet_v1", 1.0, "imagenet", progress=False)
    assert got != mirror and got.read_bytes() == data and len(server.requests) == 1


# --------------------------------------------------------------------------------------------
# Local sources
# --------------------------------------------------------------------------------------------


def test_file_url_and_local_path_work_offline(tmp_path, isolated_env):
    src = tmp_path / "src" / "local.weights.h5"
    src.parent.mkdir()
    src.write_bytes(DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # local sources are not "unverified downloads"
        from_url = W.fetch(src.as_uri(), SHA, len(DATA), progress=False)
        from_path = W.fetch(str(src), SHA, len(DATA), cache_subdir="p", progress=False)
    assert from_url.read_bytes() == DATA and from_path.read_bytes() == DATA
    assert from_url.is_relative_to(isolated_env) and from_path.is_relative_to(isolated_env)
    with pytest.raises(W.ChecksumError):
        W.fetch(src.as_uri(), sha(b"other"), None, cache_subdir="bad", progress=False)
    with pytest.raises(W.ChecksumError, match="size mismatch"):
        W.fetch(src, SHA, len(DATA) + 1, cache_subdir="bad", progress=False)
    assert not (isolated_env / "bad").exists() or cache_files(isolated_env / "bad") == []
    with pytest.raises(W.DownloadError, match="not found"):
        W.fetch(tmp_path / "nope.bin", SHA, progress=False)


def test_resolve_weights_local_path_and_none(tmp_path):
    src = tmp_path / "mine.weights.h5"
    src.write_bytes(b"abc")
    assert W.resolve_weights("multi_max", 1.0, None) is None
    assert W.resolve_weights("multi_max", 1.0, str(src)) == src  # no copy
    assert W.resolve_weights("multi_max", 1.0, src) == src
    with pytest.raises(ValueError, match="not found"):
        W.resolve_weights("multi_max", 1.0, tmp_path / "missing.weights.h5")
    with pytest.raises(ValueError, match="neither None"):
        W.resolve_weights("multi_max", 1.0, "no/such/file.weights.h5")


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    assert W.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MHMODELS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.cache_dir() == tmp_path / "home" / ".cache" / "mhmodels"


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def _entry(model, width, fmt, url, data, **extra):
    return {"model": model, "width": width, "format": fmt, "dataset": "imagenet", "url": url,
            "sha256": sha(data), "size": len(data), **extra}


@pytest.fixture
def manifest(server, tmp_path, monkeypatch):
    tflite = b"TFL3" + bytes(range(256)) * 10
    small = DATA[:40_000]
    server.files["/mm.weights.h5"] = DATA
    server.files["/mm_int8.tflite"] = tflite
    server.files["/ma.weights.h5"] = small
    doc = {"format_version": 1, "checkpoints": [
        _entry("multi_max", 1.0, "keras", server.url("/mm.weights.h5"), DATA),
        _entry("multi_max", 1.0, "tflite_int8", server.url("/mm_int8.tflite"), tflite),
        _entry("multi_avg", 0.75, "keras", server.url("/ma.weights.h5"), small),
    ]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(path))
    return {"path": path, "tflite": tflite, "small": small}


def test_shipped_manifest_is_valid():
    path = W.manifest_path()
    assert path.name == "weights.json" and path.parent.name == "zoo"
    ckpts = W.load_manifest()
    assert len(ckpts) == len(json.loads(path.read_text())["checkpoints"]) >= 45
    assert all(c.dataset == "imagenet" and c.classes in (1000, 1001) and c.resolution
               for c in ckpts)
    with pytest.raises(ValueError, match=r"Available for 'multi_avg': width=1 format=tflite_int8"):
        W.resolve_weights("multi_avg", 1.0, "imagenet")  # only a TFLite file is published
    empty = path.parent / "empty.json"
    assert not empty.exists()


def test_manifest_from_env_and_imagenet_weights(server, manifest):
    assert W.manifest_path() == manifest["path"]
    ckpts = W.load_manifest()
    assert [(c.model, c.width, c.format) for c in ckpts] == [
        ("multi_max", 1.0, "keras"), ("multi_max", 1.0, "tflite_int8"),
        ("multi_avg", 0.75, "keras")]
    assert ckpts[0] == W.find_checkpoint("multi_max", 1, "keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # manifest entries are verified: no warning
        path = W.resolve_weights("multi_max", 1.0, "imagenet", progress=False)
        again = W.resolve_weights("multi_max", 1.0, server.url("/mm.weights.h5"),
                                  progress=False)  # URL known to the manifest → verified
    assert path.name == "multi_max-w1-imagenet.weights.h5" and path.read_bytes() == DATA
    assert again == path and len(server.requests) == 1


def test_unknown_model_or_width_lists_what_exists(manifest):
    with pytest.raises(ValueError, match=r"Available for 'multi_max': width=1 format=keras"):
        W.find_checkpoint("multi_max", 0.5, "keras")
    with pytest.raises(ValueError) as err:
        W.resolve_weights("mobilenet_v2", 1.0, "imagenet")
    assert "no checkpoints for 'mobilenet_v2'" in str(err.value)
    assert "['multi_avg', 'multi_max']" in str(err.value)
    with pytest.raises(ValueError, match="dataset=cifar10"):
        W.resolve_weights("multi_max", 1.0, "cifar10")


def test_download_tflite(server, manifest):
    path = W.download_tflite("multi_max", 1.0, "int8", progress=False)
    assert path.suffix == ".tflite" and path.read_bytes() == manifest["tflite"]
    assert server.requests == [("/mm_int8.tflite", None)]
    with pytest.raises(ValueError, match="quantization must be one of"):
        W.download_tflite("multi_max", 1.0, "int4")
    with pytest.raises(ValueError, match="format=tflite_int8"):
        W.download_tflite("multi_max", 1.0, "float")  # lists the int8 one that exists


_GOOD = {"model": "multi_max", "width": 1.0, "format": "keras", "dataset": "imagenet",
         "url": "https://example.invalid/m.weights.h5", "sha256": "a" * 64, "size": 10}


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, r"checkpoints\[0\] \(model 'multi_max'\): unknown field\(s\) \['extra'\]"),
    ({"sha256": "a" * 63}, r"checkpoints\[0\] \(model 'multi_max'\): field 'sha256'"),
    ({"size": None}, r"missing required field 'size'"),
    ({"md5": "xyz"}, r"field 'md5' must be 32"),
    ({"resolution": 0}, r"field 'resolution' must be a positive integer"),
    ({"source": "pypi"}, r"field 'source' must be one of"),
    ({"top1": 170}, r"field 'top1' must be a percentage"),
    # A TF checkpoint is several files and none is published: loaded from a local path only.
    ({"format": "tf_checkpoint"}, r"field 'format' must be one of"),
    ({"size": -5}, r"field 'size' must be a positive integer"),
    ({"format": "onnx"}, r"field 'format' must be one of"),
    ({"width": "1.0"}, r"field 'width' must be a positive number"),
    ({"url": "ftp://x/y"}, r"field 'url'"),
    # No published checkpoint is an archive (zoo/weights.json): archives are not a field.
    ({"archive": "tar.gz", "member": "a.weights.h5"},
     r"unknown field\(s\) \['archive', 'member'\]"),
])
def test_manifest_validation_names_entry_and_field(tmp_path, change, message):
    entry = dict(_GOOD)
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format_version": 1, "checkpoints": [entry]}))
    with pytest.raises(ValueError, match=message):
        W.load_manifest(path)


def test_manifest_top_level_and_duplicates_rejected(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format_version": 2, "checkpoints": []}))
    with pytest.raises(ValueError, match="format_version"):
        W.load_manifest(path)
    path.write_text(json.dumps({"format_version": 1, "checkpoints": [], "x": 1}))
    with pytest.raises(ValueError, match=r"unknown top-level field\(s\) \['x'\]"):
        W.load_manifest(path)
    path.write_text(json.dumps({"format_version": 1, "checkpoints": [_GOOD, _GOOD]}))
    with pytest.raises(ValueError, match=r"checkpoints\[1\].*duplicates checkpoints\[0\]"):
        W.load_manifest(path)
    with pytest.raises(ValueError, match="not found"):
        W.load_manifest(tmp_path / "absent.json")


def test_fetch_argument_validation(server):
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        W.fetch(server.url("/x"), "abc", progress=False)
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        W.fetch("ftp://127.0.0.1/x", progress=False)
    with pytest.raises(TypeError, match="extract"):
        W.fetch(server.url("/x.tar.gz"), extract="tar.gz", progress=False)  # none published
    assert server.requests == []


def test_download_tflite_loads_no_tensorflow_at_run_time(tmp_path):
    """What `import mhmodels.weights` and a download really load (the package's __init__
    included, in a fresh interpreter), not what weights.py's own import lines say."""
    tflite = b"TFL3" + DATA[:1000]
    src = tmp_path / "mm_int8.tflite"
    src.write_bytes(tflite)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"format_version": 1, "checkpoints": [
        _entry("multi_max", 1.0, "tflite_int8", src.as_uri(), tflite)]}))
    code = ("import sys, json, mhmodels.weights as W\n"
            "path = W.download_tflite('multi_max', 1.0, 'int8', progress=False)\n"
            "print(json.dumps([str(path), sorted(sys.modules)]))")
    env = {**os.environ, "MHMODELS_WEIGHTS_MANIFEST": str(manifest),
           "MHMODELS_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    path, modules = json.loads(out.splitlines()[-1])
    assert Path(path).read_bytes() == tflite
    top = {m.split(".")[0] for m in modules}
    assert not top & {"tensorflow", "keras", "tf_keras", "h5py", "torch", "jax"}, top


def test_checkpoint_formats_have_one_suffix_table_and_quantizations_one_definition():
    """Issue 22: tf_checkpoint was '.ckpt' in one table and '.index' in the other (it is now
    in neither: no TF checkpoint is published as one file); the QUANTIZATIONS tuple was
    defined in export.py and here."""
    ckpt = W.Checkpoint("multi_avg", 0.35, "tflite_int8", "imagenet", "https://h/a.tflite",
                        None, None, resolution=224)
    assert ckpt.suffix == ".tflite" and set(W.FORMATS) == set(W.SUFFIXES)
    assert ckpt.cache_filename == "multi_avg-w0.35-r224-imagenet-tflite_int8.tflite"
    assert "tf_checkpoint" not in W.FORMATS and W.LOADABLE_FORMATS == ("keras", "keras_h5")
    import mhmodels.export

    assert mhmodels.export.QUANTIZATIONS is W.QUANTIZATIONS
    assert not hasattr(W, "_sha256_file")  # dead code gone (hashing is pooch.file_hash)


def test_weights_fetch_offline_is_one_error_line(tmp_path):
    """Issue 23.5: `python -m mhmodels weights fetch` offline printed a 100-line traceback and
    exited 1; it is one `error:` line and exit status 2, like the other commands."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: "offline"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"format_version": 1, "checkpoints": [
        _entry("multi_max", 1.0, "tflite_int8", f"http://127.0.0.1:{port}/mm.tflite", b"x")]}))
    env = {**os.environ, "MHMODELS_WEIGHTS_MANIFEST": str(manifest),
           "MHMODELS_HOME": str(tmp_path / "cache"), "NO_PROXY": "127.0.0.1"}
    run = subprocess.run([sys.executable, "-m", "mhmodels", "weights", "fetch", "multi_max",
                          "--format=tflite_int8", "--noprogress"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download "), lines
    assert "Connection refused" in lines[0] and run.stdout == ""
    assert not (tmp_path / "cache").exists() or cache_entries(tmp_path / "cache") == []
