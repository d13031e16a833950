"""One writer per run directory: `run_lock(directory, what)`.

A search, a training, a latency collection or an experiment keeps resumable state in its
directory (checkpoints, history, CSV rows). Two commands on one directory would interleave
that state and fail late, or not at all; so each takes the directory's lock first and a
second command refuses at once, naming the holder (host, pid, start time, command).

The lock is a small JSON file (`<directory>/mhmodels.lock`, or `<file>.lock` for a command
whose state is one output file) created exclusively:
  * local paths: written to a temporary file, then hard-linked to the lock name (atomic,
    fails if the name exists; also on NFS), O_EXCL where hard links are not supported;
  * remote paths (gs://, through tf.io.gfile): GCS has no exclusive create through gfile, so
    the object is written only when absent, then read back after a short settle time: the
    last writer wins and every other writer sees a foreign token and backs off.
A background thread refreshes the file's `refreshed` time every `lease_s / 4` seconds.

A lock left by a process that died (kill -9, a lost machine) is stale and is taken over
with one warning line:
  * same host (and same boot): stale when its pid is not running, or runs a process that
    started at another time (a reused pid);
  * another host, or a host that cannot be asked: stale when its lease (`refreshed` +
    `lease_s`) has expired.
Takeovers are serialised by a short-lived `<lock>.takeover` file, so two processes that
both find a lock stale cannot both take it.

In multi-worker jobs only the chief locks (`chief=False` is a no-op): every worker of one
job shares the directory by design. The lock is re-entrant within a process (a CLI that
checks early and a library function that locks again). Bottom floor: imports nothing of
mhmodels but `files`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from mhmodels.files import check_writable_dir, is_remote

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock", "check_unlocked", "lock_path",
           "is_chief_task", "holder_description"]

LOCK_NAME = "mhmodels.lock"
DEFAULT_LEASE_S = 60.0      # another host's lock is stale this long after its last refresh
TAKEOVER_STALE_S = 30.0     # a takeover file older than this was left by a killed process
REMOTE_SETTLE_S = 1.0       # read-back delay of a remote exclusive create

log = logging.getLogger(__name__)


class RunLockedError(FileExistsError):
    """The directory is held by another live command (a user error: one line, exit 2)."""


# --------------------------------------------------------------------------------------------
# Who we are, and whether a holder still lives

def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _identity(what: str, lease_s: float) -> dict:
    now = time.time()
    pid = os.getpid()
    return {"what": what, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
            "process_start": process_start_ticks(pid), "started": now, "refreshed": now,
            "lease_s": float(lease_s), "token": uuid.uuid4().hex}


def _same_host(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    return boot is None or holder.get("boot_id") in (None, boot)


def stale_reason(holder: dict, now: float | None = None) -> str | None:
    """Why the lock described by `holder` is stale, or None while its holder lives."""
    now = time.time() if now is None else now
    if _same_host(holder) and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if not _pid_running(pid):
            return f"process {pid} is not running"
        recorded, current = holder.get("process_start"), process_start_ticks(pid)
        if recorded is not None and current is not None and recorded != current:
            return f"pid {pid} now belongs to another process"
        return None
    if holder.get("host") == socket.gethostname() and holder.get("boot_id") not in (
            None, _boot_id()):
        return "its host has rebooted since"
    refreshed = float(holder.get("refreshed", 0.0))
    lease = float(holder.get("lease_s", DEFAULT_LEASE_S))
    if now - refreshed > lease:
        return f"its lease expired {now - refreshed - lease:.0f} s ago"
    return None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def holder_description(holder: dict) -> str:
    return (f"{holder.get('what', 'a command')} on host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, started {_utc(float(holder.get('started', 0)))}")


def is_chief_task(strategy: str = "multi_worker", tf_config: str | None = None) -> bool:
    """Whether this process is its job's chief, from $TF_CONFIG (read before TensorFlow loads;
    the same rule as mhmodels.distribute.is_chief): only multi-worker jobs have non-chiefs."""
    if strategy != "multi_worker":
        return True
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    try:
        config = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return True  # the strategy reports a malformed TF_CONFIG itself
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    task_type, index = task.get("type"), int(task.get("index", 0) or 0)
    if not cluster or task_type in (None, "chief"):
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


# --------------------------------------------------------------------------------------------
# Storage: local files or tf.io.gfile objects, behind four operations


class _LocalStore:
    def __init__(self):
        self.created: list[str] = []  # directories makedirs made, deepest first

    def makedirs(self, directory: str) -> None:
        missing = directory
        while missing and not os.path.lexists(missing):
            self.created.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(directory, exist_ok=True)

    def remove_created_dirs(self) -> None:
        """Directories made for the lock and still empty: a command that failed before
        writing anything leaves nothing behind."""
        for directory in self.created:
            try:
                os.rmdir(directory)
            except OSError:  # not empty: the command wrote there
                return

    def create(self, path: str, data: bytes, token: str) -> bool:
        tmp = f"{path}.{token}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: an exclusive create
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.unlink(tmp)

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def age_s(self, path: str) -> float:
        try:
            return time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return 0.0

    def replace(self, path: str, data: bytes, token: str) -> None:
        tmp = f"{path}.{token}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _GFileStore:
    """tf.io.gfile objects (gs://, or any path: tests run this code on a local directory)."""

    def __init__(self, settle_s: float = REMOTE_SETTLE_S):
        import tensorflow as tf
        self.gfile = tf.io.gfile
        self.settle_s = settle_s

    def makedirs(self, directory: str) -> None:
        self.gfile.makedirs(directory)

    def create(self, path: str, data: bytes, token: str) -> bool:
        if self.gfile.exists(path):
            return False
        tmp = f"{path}.{token}.tmp"
        with self.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        try:
            self.gfile.rename(tmp, path, overwrite=False)
        except Exception:  # noqa: BLE001 - it appeared meanwhile
            self.delete(tmp)
            return False
        time.sleep(self.settle_s)  # a racing writer's object replaces ours: read back
        current = _parse(self.read(path))
        return bool(current) and current.get("token") == token

    def read(self, path: str) -> bytes | None:
        try:
            with self.gfile.GFile(path, "rb") as f:
                return f.read()
        except Exception:  # noqa: BLE001 - NotFoundError, and a deleted-meanwhile object
            return None

    def age_s(self, path: str) -> float:
        try:
            return time.time() - self.gfile.stat(path).mtime_nsec / 1e9
        except Exception:  # noqa: BLE001
            return 0.0

    def replace(self, path: str, data: bytes, token: str) -> None:
        tmp = f"{path}.{token}.tmp"
        with self.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        self.gfile.rename(tmp, path, overwrite=True)

    def delete(self, path: str) -> None:
        try:
            self.gfile.remove(path)
        except Exception:  # noqa: BLE001 - already gone
            pass


def _store_for(directory: str, store: str | None):
    kind = store or ("gfile" if is_remote(directory) else "local")
    if kind == "gfile":
        return _GFileStore()
    if kind == "local":
        return _LocalStore()
    raise ValueError(f"unknown lock store {store!r} (local or gfile)")


def _parse(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # torn or foreign: judged by its age
    return value if isinstance(value, dict) else {}


def _encode(holder: dict) -> bytes:
    return (json.dumps(holder, indent=1, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------------------------
# The lock

_HELD: dict[str, list] = {}   # lock path -> [depth, _Lease] of the locks this process holds
_HELD_GUARD = threading.Lock()


class _Lease:
    """A held lock and the thread that refreshes its `refreshed` time."""

    def __init__(self, store, path: str, holder: dict):
        self.store, self.path, self.holder = store, path, holder
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._refresh, daemon=True,
                                       name=f"mhmodels-lock-{os.path.basename(path)}")
        self.thread.start()

    def _refresh(self) -> None:
        period = max(self.holder["lease_s"] / 4.0, 0.05)
        while not self.stop.wait(period):
            try:
                current = _parse(self.store.read(self.path))
                if not current or current.get("token") != self.holder["token"]:
                    log.error("the lock %s was taken over by %s; this command no longer holds "
                              "it", self.path, holder_description(current or {}))
                    return
                self.holder["refreshed"] = time.time()
                self.store.replace(self.path, _encode(self.holder), self.holder["token"])
            except Exception as err:  # noqa: BLE001 - a transient storage error: next period
                log.debug("refreshing %s failed: %s", self.path, err)

    def release(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)
        current = _parse(self.store.read(self.path))
        if current and current.get("token") == self.holder["token"]:
            self.store.delete(self.path)
            if hasattr(self.store, "remove_created_dirs"):
                self.store.remove_created_dirs()


def _refusal(target: str, path: str, holder: dict, flag: str | None) -> RunLockedError:
    where = f"{flag}={target}" if flag else target
    return RunLockedError(
        f"{where} is in use by {holder_description(holder)}; wait for it to finish or stop "
        f"it, or use another {'directory' if os.path.basename(path) == LOCK_NAME else 'file'} "
        f"(lock: {path})")


def _take_over(store, path: str, stale: dict, reason: str, own: dict) -> bool:
    """Replace the stale lock `stale` by `own`, unless someone else got there first."""
    mutex = f"{path}.takeover"
    taker = dict(own, token=own["token"] + "-takeover")
    deadline = time.time() + 10.0
    while not store.create(mutex, _encode(taker), taker["token"]):
        if store.age_s(mutex) > TAKEOVER_STALE_S:  # left by a process killed mid-takeover
            store.delete(mutex)
            continue
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    try:
        current = _parse(store.read(path))
        if current is not None and current.get("token") != stale.get("token"):
            return False  # taken over (or released and retaken) meanwhile: judge it again
        store.delete(path)
        if not store.create(path, _encode(own), own["token"]):
            return False
    finally:
        store.delete(mutex)
    log.warning("taking over the lock %s: %s left it (%s)", path, holder_description(stale),
                reason)
    return True


def _acquire(store, target: str, path: str, what: str, lease_s: float,
             flag: str | None) -> _Lease:
    store.makedirs(os.path.dirname(path))
    for _ in range(20):  # each round ends in a lock, a refusal, or a lost race
        own = _identity(what, lease_s)
        if store.create(path, _encode(own), own["token"]):
            return _Lease(store, path, own)
        holder = _parse(store.read(path))
        if holder is None:
            continue  # released meanwhile
        if not holder:  # torn (a crash mid-write without hard links) or foreign content
            if store.age_s(path) < 5.0:
                time.sleep(0.1)
                continue
            reason = "the lock file is unreadable"
        else:
            reason = stale_reason(holder)
            if reason is None:
                raise _refusal(target, path, holder, flag)
        if _take_over(store, path, holder, reason, own):
            return _Lease(store, path, own)
    raise RunLockedError(f"{target}: could not take its lock ({path}); another command "
                         "keeps changing it")


def lock_path(target: str | os.PathLike, file: bool = False) -> str:
    """The lock of a directory (`<dir>/mhmodels.lock`) or of one output file (`<file>.lock`)."""
    target = os.fspath(target)
    if not is_remote(target):
        target = os.path.abspath(os.path.expanduser(target))
    return f"{target}.lock" if file else os.path.join(target, LOCK_NAME)


@contextlib.contextmanager
def run_lock(target: str | os.PathLike, what: str, *, file: bool = False, chief: bool = True,
             flag: str | None = None, lease_s: float = DEFAULT_LEASE_S,
             store: str | None = None) -> Iterator[dict | None]:
    """Hold the single-writer lock of a run directory (or, with file=True, of one output
    file) for the body; yields the holder record.

    what: the command, as the refusal names it ("search", "training", ...); chief: False on
    a multi-worker job's other workers (no lock); flag: the flag that named the target, for
    the refusal; lease_s: how long another host trusts an unrefreshed lock; store: 'local' or
    'gfile' (default: by the path). Raises RunLockedError when another live command holds it.
    """
    if not chief:
        yield None
        return
    target = os.fspath(target)
    if not is_remote(target):  # the usual one-line error for an unusable path first
        check_writable_dir(os.path.dirname(os.path.abspath(target)) if file else target,
                           flag or "--directory")
    path = lock_path(target, file)
    with _HELD_GUARD:
        held = _HELD.get(path)
        if held is None:
            held = _HELD[path] = [0, _acquire(_store_for(target, store), target, path, what,
                                              lease_s, flag)]
        held[0] += 1
    try:
        yield held[1].holder
    finally:
        with _HELD_GUARD:
            held[0] -= 1
            if held[0] == 0:
                del _HELD[path]
                held[1].release()


def check_unlocked(target: str | os.PathLike, what: str, *, file: bool = False,
                   chief: bool = True, flag: str | None = None) -> None:
    """Refuse now (a CLI, before TensorFlow loads) if another live command holds `target`.

    Reads only; the command takes the lock itself when its work starts (`run_lock`). Remote
    paths are left to `run_lock` (reading them needs TensorFlow).
    """
    target = os.fspath(target)
    if not chief or is_remote(target):
        return
    path = lock_path(target, file)
    if path in _HELD:
        return
    holder = _parse(_LocalStore().read(path))
    if holder and stale_reason(holder) is None:
        raise _refusal(target, path, holder, flag)
