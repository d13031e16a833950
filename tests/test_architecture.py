"""The house flows one way: no import cycle in mhmodels/ or search/ (function-local imports
included), no import that climbs a floor of docs/architecture.md, and every module placed
there. Parses source only: runs in well under a second."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mhmodels", "search")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` at a module's top level."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file (functions included). A
    submodule importing its own package (`import mhmodels` for the public names) is not an
    edge: the package's __init__ is checked as a module of its own. Nor is an import under
    the top-level `if __name__ == "__main__":`: it runs only when the file is the script
    (`python -m search.cost_model` hands over to its command module), as module `__main__`,
    never when `name` is imported, so it cannot close a cycle."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in (n for top in tree.body if not is_main_guard(top) for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name and not (
                    target in PACKAGES and name.startswith(target + ".")):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floors() -> dict[str, int]:
    """mhmodels module -> floor, read from the table of docs/architecture.md."""
    out = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.match(r"^\d+ ", cells[0]):
            for module in re.findall(r"`([\w.]+)`", cells[1]):
                out["mhmodels" if module == "mhmodels" else f"mhmodels.{module}"] = int(
                    cells[0].split()[0])
    return out


def test_cycle_finder_finds_a_cycle_through_function_local_imports(tmp_path):
    """The checker can fail: two modules importing each other, one inside a function."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import g\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_a_script_guard_hands_over_without_an_edge(tmp_path):
    """`python -m a` may hand over to a command module that imports `a`: the guard's import
    runs in module __main__ only. The same import in a function is still an edge."""
    (tmp_path / "a.py").write_text("def f():\n    pass\n\n\nif __name__ == '__main__':\n"
                                   "    from b import run\n    run()\n")
    (tmp_path / "b.py").write_text("from a import f\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert {n: imports_of(n, p, modules) for n, p in modules.items()} == {"a": set(), "b": {"a"}}
    (tmp_path / "a.py").write_text("def f():\n    from b import run\n")
    assert imports_of("a", tmp_path / "a.py", modules) == {"b"}


def test_no_import_cycle_in_mhmodels_or_search():
    graph = import_graph()
    assert len(graph) > 40  # both packages were read
    assert "mhmodels.pretrained" in graph["mhmodels.factory"]  # local imports are edges too
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_mhmodels_module_has_a_floor_in_docs_architecture():
    placed = floors()
    modules = {m for m in module_files() if m.split(".")[0] == "mhmodels"}
    assert not modules - set(placed), (
        f"modules missing from the floor table of docs/architecture.md: "
        f"{sorted(modules - set(placed))}")
    assert not set(placed) - modules, f"no such modules: {sorted(set(placed) - modules)}"


def test_no_import_climbs_a_floor():
    placed = floors()
    graph = import_graph()
    climbing = [f"{m} (floor {placed[m]}) imports {t} (floor {placed[t]})"
                for m in sorted(placed) for t in sorted(graph.get(m, ()))
                if t in placed and placed[t] > placed[m]]
    assert not climbing, "; ".join(climbing)
    assert not [m for m in placed for t in graph.get(m, ()) if t.split(".")[0] == "search"], (
        "mhmodels imports search")


@pytest.mark.parametrize("name, floor", [("mhmodels.spec", 0), ("mhmodels.builder", 2),
                                         ("mhmodels.registry", 3), ("mhmodels.factory", 5)])
def test_the_floors_are_the_documented_ones(name, floor):
    """The public build() is above the registry, the registry above the builder."""
    assert floors()[name] == floor
    assert "mhmodels.builder" not in import_graph()["mhmodels.registry"]
