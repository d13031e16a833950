"""The one place every mhmodels command line goes through (`python -m mhmodels <command>`,
`python -m mhmodels.train`, `python -m search` and its modules; installed: `mhmodels.search`).

`run(main)` is absl's `app.run(main)` plus what a user of every command expects:
  * `--help` (`-h`, `--helpshort`) prints the command's own flags, in groups when the command
    names them (`groups`); `--helpfull` is absl's full list;
  * TensorFlow's C++ start-up lines and absl INFO logs (the converter's pages) are off unless
    `--verbosity` (or `-v`) is given: `--verbosity=0` brings INFO back, `--verbosity=1` adds
    debug and tracebacks; the commands' own progress lines (loggers `mhmodels.*`,
    `search.*`) stay;
  * a bad input (ValueError, missing file, permission) is one line `error: ...` and exit
    status 2, not a traceback; so is a `$MHMODELS_HOME` that is a file (checked first);
  * `command('search.cost_model')` names a search module as it runs here (`search.X` in a
    checkout, `mhmodels.search.X` in an installed copy), for hints.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import textwrap
from types import ModuleType
from typing import Callable, Iterator, Mapping, Sequence

HELP_FLAGS = ("-h", "--help", "--helpshort", "-?")
OWN_LOGGERS = ("mhmodels", "search")  # their INFO lines are the commands' progress
# Exceptions that mean "the input is wrong", printed as one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
               NotADirectoryError, IsADirectoryError)
# Native (C++) log lines of an INFO level, and absl's notice that precedes them.
_NATIVE_INFO = re.compile(r"^(I\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before "
                          r"absl::InitializeLog\(\) is called are written to STDERR)")


def verbosity_requested(argv: Sequence[str]) -> int | None:
    """The --verbosity / -v value on the command line, or None when not given."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for name in ("--verbosity", "-v"):
            if arg == name and i + 1 < len(argv):
                return _level(argv[i + 1])
            if arg.startswith(name + "="):
                return _level(arg.split("=", 1)[1])
    return None


def _level(text: str) -> int:
    names = {"debug": 1, "info": 0, "warning": -1, "error": -2, "fatal": -3}
    try:
        return int(text)
    except ValueError:
        return names.get(text.lower(), 0)


def quiet_native_logs(argv: Sequence[str] | None = None) -> None:
    """Hide TensorFlow's C++ INFO/WARNING logs unless --verbosity asks for them.

    Must run before TensorFlow is imported (it reads TF_CPP_MIN_LOG_LEVEL once). A value the
    user exported is kept.
    """
    level = verbosity_requested(sys.argv if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if level is None or level < 0 else "0")


@contextlib.contextmanager
def filtered_native_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Capture file descriptor 2 (native code writes there directly); pass on every line for
    which `drop` is false. Used around TensorFlow's import and the TFLite converter."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not drop(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def is_native_info(line: str) -> bool:
    return bool(_NATIVE_INFO.match(line))


class _QuietTensorFlowImport:
    """A one-shot import hook: the first `import tensorflow` runs with its native INFO lines
    dropped (printed before TF reads TF_CPP_MIN_LOG_LEVEL, so nothing else hides them)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with filtered_native_stderr(is_native_info):
                exec_module(module)
        spec.loader.exec_module = quiet_exec_module
        return spec


def quiet_tensorflow_import(argv: Sequence[str] | None = None) -> None:
    """Make TensorFlow's import quiet unless --verbosity is given (no-op once imported)."""
    level = verbosity_requested(sys.argv if argv is None else argv)
    if "tensorflow" in sys.modules or (level is not None and level >= 0):
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def command(module: str) -> str:
    """`python -m <module>` as it runs where the user is, for hints and help texts.

    `module` is a search module as a checkout names it ("search", "search.cost_model"). The
    wheel installs it as `mhmodels.search`; the top-level `search` exists only in a checkout
    (on sys.path: its root is the working directory or PYTHONPATH). So the checkout's name is
    given only when it resolves to the search package beside this mhmodels, else the
    installed name, which works wherever mhmodels is installed (editable installs included).
    """
    import importlib.util
    top, _, rest = module.partition(".")
    if top != "search":
        return f"python -m {module}"
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "search")
    try:
        spec = importlib.util.find_spec("search")
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if origin and os.path.dirname(os.path.abspath(origin)) == beside:
        return f"python -m {module}"
    return f"python -m mhmodels.{module}"


def check_home() -> None:
    """Fail now, not after the work, when $MHMODELS_HOME (downloads, zoo entries, cost models)
    cannot be a directory: it, or a parent of it, is a file."""
    from mhmodels.files import HOME_ENV, user_home
    home = user_home()
    probe = home
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = f"${HOME_ENV}={os.environ[HOME_ENV]}" if os.environ.get(HOME_ENV) else \
            f"mhmodels' home {home}"
        raise NotADirectoryError(f"{where}: {probe} is a file, not a directory (mhmodels keeps "
                                 f"downloads, zoo entries and cost models there); set "
                                 f"{HOME_ENV} to a directory")


# --------------------------------------------------------------------------------------------
# Help

def _module_name(module: ModuleType | str) -> str:
    name = module if isinstance(module, str) else module.__name__
    return sys.argv[0] if name == "__main__" else name


def _flag_lines(flag) -> list[str]:
    from absl import flags
    is_bool = isinstance(flag, flags.BooleanFlag)
    name = f"--[no]{flag.name}" if is_bool else f"--{flag.name}"
    default = flag.default_as_str if flag.default is not None else "none"
    body = f"{flag.help} (default: {default})"
    return [f"  {name}"] + textwrap.wrap(body, width=96, initial_indent="      ",
                                         subsequent_indent="      ")


def help_text(doc: str, module: ModuleType | str,
              groups: Mapping[str, Sequence[str]] | None = None, flag_values=None) -> str:
    """`doc` then the flags `module` defines, under `groups` headings (the rest: 'other')."""
    from absl import flags
    fv = flag_values or flags.FLAGS
    own = {f.name: f for f in fv.get_flags_for_module(_module_name(module))}
    lines = [doc.strip(), ""]
    listed: set[str] = set()
    for title, names in (groups or {}).items():
        present = [n for n in names if n in own]
        if not present:
            continue
        lines.append(f"{title} flags:")
        for n in present:
            lines += _flag_lines(own[n])
            listed.add(n)
        lines.append("")
    rest = sorted(set(own) - listed)
    if rest:
        lines.append("flags:" if not groups else "other flags:")
        for n in rest:
            lines += _flag_lines(own[n])
        lines.append("")
    lines.append("--verbosity=0 shows TensorFlow's and absl's INFO logs (1: also debug and "
                 "tracebacks); --helpfull lists every flag, absl's included.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running

def run(main: Callable[[list[str]], int | None], *, module: ModuleType | str | None = None,
        doc: str | None = None, groups: Mapping[str, Sequence[str]] | None = None,
        argv: Sequence[str] | None = None) -> None:
    """Run an absl `main` as a user-facing command (see the module docstring).

    module: where the command's flags are defined (default: main's module); doc: the help's
    head (default: that module's docstring).
    """
    from absl import app
    argv = list(sys.argv if argv is None else argv)
    module = module if module is not None else sys.modules[main.__module__]
    if isinstance(module, str):
        module = sys.modules.get(module, module)
    if any(a in HELP_FLAGS for a in argv[1:argv.index("--") if "--" in argv else None]):
        text = doc if doc is not None else (getattr(module, "__doc__", None) or "")
        print(help_text(text, module, groups))
        sys.exit(0)
    quiet_native_logs(argv)
    quiet_tensorflow_import(argv)
    sys.argv = argv
    app.run(_wrapped(main, argv), argv=argv)


def _wrapped(main, argv):
    level = verbosity_requested(argv)

    def wrapped(args):
        from absl import app
        from absl import logging as absl_logging
        if level is None:  # TensorFlow's (and its converter's) INFO pages off ...
            absl_logging.set_verbosity(absl_logging.WARNING)
            for name in OWN_LOGGERS:  # ... our commands' own progress lines on
                logging.getLogger(name).setLevel(logging.INFO)
        try:
            check_home()  # before TensorFlow loads and before any work
            return main(args)
        except (app.UsageError, *USER_ERRORS) as err:
            if level is not None and level >= 1:
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    return wrapped
