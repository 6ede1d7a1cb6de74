"""The shape of the package: imports run one way, and inference never reaches into training.

The import graph is read from the source (``ast``), with the imports inside functions too: a
deferred import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slice2d"
TRAINING_USERS = {"slice2d.cli", "slice2d.demo"}  # besides slice2d.train itself


def import_graph(folder: Path, package: str = "slice2d") -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports anywhere in its source
    (``import p.x``, ``from p.x import y``, ``from p import x``, ``from .x import y``, ``from . import x``)."""
    modules = {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for path in sorted(folder.glob("*.py")):
        if path.stem == "__init__":
            continue
        name = f"{package}.{path.stem}"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative to the package
                    base = f"{package}.{base}" if base else package
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            found.update(t for t in targets if t in modules)
        graph[name] = found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_run_one_way():
    graph = import_graph(PACKAGE)
    assert len(graph) > 20 and "slice2d.io" in graph["slice2d.predict"]  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_training_and_its_entry_points_import_train():
    graph = import_graph(PACKAGE)
    importers = {module for module, imported in graph.items() if "slice2d.train" in imported}
    assert importers <= TRAINING_USERS, sorted(importers - TRAINING_USERS)


@pytest.mark.parametrize("back", [
    "def f():\n    from pkg.a import x\n",  # deferred, inside a function
    "import pkg.a\n",
    "from . import a\n",
    "from .a import x\n",
], ids=["inside-a-function", "import-module", "relative-module", "relative-name"])
def test_a_cycle_at_any_depth_is_found(tmp_path, back):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "a.py").write_text("from pkg.b import y\nx = 1\n")
    (folder / "b.py").write_text("from pkg import c\ny = 2\n")
    (folder / "c.py").write_text("import os\n")
    graph = import_graph(folder, "pkg")
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert find_cycle(graph) is None
    (folder / "c.py").write_text(back)
    assert find_cycle(import_graph(folder, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
