"""Packaging that installs quietly: every directory the wheel ships is a listed package with
its own data files (else setuptools prints a screen of "Package 'mhmodels.zoo.models' is
absent from the `packages` configuration" warnings on every install), and the top-level
setup.py is a shim over pyproject.toml. Reads files only (the wheel itself is built by the
slow tests/test_install.py)."""
from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = ("BUILD", "*.png")  # Bazel files; the cost models' hold-out plots (docs)
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_dir(package: str) -> Path:
    """Where a package's files come from, per [tool.setuptools.package-dir]."""
    dirs = CONFIG.get("package-dir", {})
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in dirs:
            return ROOT / dirs[".".join(parts[:i])] / Path(*parts[i:])
    return ROOT / Path(*parts)


def shipped_dirs() -> list[Path]:
    """Directories under the installed packages' sources that hold files (data or code)."""
    out = []
    for top in ("mhmodels", "search", "zoo"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_dir() and "__pycache__" not in path.parts and any(
                    p.is_file() and p.suffix != ".pyc" for p in path.iterdir()):
                out.append(path)
    return [ROOT / "mhmodels", ROOT / "search", ROOT / "zoo"] + out


def test_every_shipped_directory_is_a_listed_package():
    listed = {source_dir(p).resolve(): p for p in CONFIG["packages"]}
    missing = [str(d.relative_to(ROOT)) for d in shipped_dirs() if d.resolve() not in listed]
    assert not missing, f"directories not in [tool.setuptools] packages: {missing}"


def test_every_data_file_is_declared_by_its_own_package():
    """The zoo's files are package data of the directory that holds them (a glob of a parent
    package reaching into a subdirectory is what made setuptools warn)."""
    data = CONFIG["package-data"]
    undeclared = []
    for package in CONFIG["packages"]:
        directory = source_dir(package)
        patterns = data.get(package, [])
        assert not [p for p in patterns if "/" in p], f"{package}: a pattern reaches into a " \
            "subdirectory; list that directory as a package"
        for path in directory.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc") and not any(
                    fnmatch.fnmatch(path.name, p) for p in (*patterns, *NOT_SHIPPED)):
                undeclared.append(str(path.relative_to(ROOT)))
    assert not undeclared, f"files that would not ship: {undeclared}"
    assert "mhmodels.zoo.models" in CONFIG["packages"]  # 9 built-in specs live there


def test_setup_py_is_a_shim_over_pyproject():
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [c.func.id for c in calls] == ["setup"] and not calls[0].args and not calls[0].keywords
