"""Names -> specs, nothing else: the built-in zoo, entries the search emitted, and the user's own.

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
from typing import Any, Mapping

from mhmodels.files import ZOO_PATH_ENV, builtin_zoo_dir, zoo_dirs  # noqa: F401 (re-exported)
from mhmodels.spec import ModelSpec, SpecError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ZooEntry:
    spec: ModelSpec
    source: str  # file path or "<registered>"
    provenance: Mapping[str, Any] = field(default_factory=dict)


_registered: dict[str, ZooEntry] = {}


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
      Nothing for a bad zoo: a missing $MHMODELS_ZOO_PATH directory, a malformed entry or a
      name defined twice is left out with a warning (building that name raises the error).
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
