"""Where user data goes and how every state / output file is written.

Shipped data (the zoo's specs, cost models) is read through the package and never written;
what the user makes (search entries, refitted cost models, downloads) goes under
`$MHMODELS_HOME` (default `~/.cache/mhmodels`). Every file is written atomically (a temporary
file beside it, then a rename), local or `gs://`, with the permissions of any other file the
user creates (0666 minus the umask, usually 0644), and a damaged JSON file is an error that
names it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

HOME_ENV = "MHMODELS_HOME"
ZOO_PATH_ENV = "MHMODELS_ZOO_PATH"


def user_home() -> Path:
    """Root of the user's mhmodels data: `$MHMODELS_HOME`, else `~/.cache/mhmodels`."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mhmodels"


def user_zoo_dir() -> Path:
    """Default directory of the zoo entries a search writes (listed by the registry)."""
    return user_home() / "zoo" / "models"


def user_cost_model_dir() -> Path:
    """Default directory of refitted cost models (read before the shipped ones)."""
    return user_home() / "cost_models"


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


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


def shipped_dirs() -> list[Path]:
    """Directories whose files ship with mhmodels (never written by mhmodels itself)."""
    package = Path(os.path.abspath(__file__)).parent
    return [Path(os.path.realpath(builtin_zoo_dir())), Path(os.path.realpath(package))]


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether `path` lies inside the shipped zoo or the installed package."""
    if is_remote(path):
        return False
    real = Path(os.path.realpath(os.fspath(path)))
    return any(real == d or d in real.parents for d in shipped_dirs())


def refuse_shipped(path: str | os.PathLike, flag: str) -> None:
    """Raise if `path` lies among the files shipped with mhmodels (never written, so that an
    update or a reinstall cannot lose or clash with the user's data)."""
    if is_shipped(path):
        what = "is shipped with mhmodels" if os.path.lexists(os.fspath(path)) else \
            "is inside mhmodels' shipped files"
        raise PermissionError(
            f"{path} {what} and is never overwritten; write to another directory ({flag}, "
            f"default under ${HOME_ENV} = {user_home()})")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a torn one.

    Local: a temporary file in the same directory, fsync, mode 0666 & ~umask, os.replace.
    Remote (gs://...): a temporary object beside it, renamed over the target.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    path = os.fspath(path)
    if is_remote(path):
        import tensorflow as tf
        tmp = f"{path}.tmp{os.getpid()}"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(raw)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_writable_dir(directory: str | os.PathLike, flag: str) -> None:
    """Fail now, not after the work, if files cannot be created in `directory`.

    A missing directory is fine when it can be created (its nearest existing parent is
    writable); remote paths are not checked.
    """
    directory = os.fspath(directory)
    if is_remote(directory):
        return
    probe = Path(directory).expanduser().absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"{flag}={directory}: {probe} is not a directory")
    try:  # a real probe: permission bits say nothing for root or on a read-only mount
        fd, name = tempfile.mkstemp(dir=probe, prefix=".mhmodels_probe_")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise PermissionError(f"{flag}={directory}: cannot create files in {probe} "
                              f"({err.strerror})") from None


class DamagedFileError(ValueError):
    """A state or data file that exists but cannot be parsed."""


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """Parse a JSON file; a torn or malformed one is a `DamagedFileError` naming it."""
    path = os.fspath(path)
    if is_remote(path):
        import tensorflow as tf
        with tf.io.gfile.GFile(path, "r") as f:
            text = f.read()
    else:
        text = Path(path).read_text()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{what} {path} is damaged ({err}){'; ' + hint if hint else ''}"
                               ) from None
