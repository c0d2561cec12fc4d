"""The shim's modules import each other without cycles (imports inside functions included): each module can be
read, and tested, on top of the ones below it."""
from __future__ import annotations

import ast
from pathlib import Path

SHIM = Path(__file__).resolve().parents[1] / "shim"


def shim_imports(path: Path) -> set[str]:
    """The shim modules ``path`` imports (``from . import x``, ``from .x import y``, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if (SHIM / f"{alias.name}.py").exists())
    return found - {path.stem}


def test_no_import_cycles_among_the_shims_modules():
    graph = {p.stem: shim_imports(p) for p in SHIM.glob("*.py")}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, set())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    # every module may import the package root (__init__: errors and the version, nothing else)
    cycles = [c for c in cycles if "__init__" not in c]
    assert cycles == [], sorted({" -> ".join(c) for c in cycles})
