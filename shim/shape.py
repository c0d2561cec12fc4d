"""Does an unknown vLLM release have the shape a family expects? Read from its source files, not imported.

A release the matrix does not cover (newer than its newest row, or a dev/nightly/local build) gets the nearest
family, which is applied only if every target it wraps is where the family expects it, and the core's premises
hold: ``init`` targets take ``world_size``, ``rank`` and ``distributed_init_method`` and call
``init_process_group`` only behind ``is_initialized()`` (so a private world that is current makes vLLM build its
own WORLD inside it); ``teardown`` targets exist. Anything else is named in the refusal.
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
from pathlib import Path

from .family import Family, Target

INIT_PARAMETERS = ("world_size", "rank", "distributed_init_method")


def _source_of(dist_name: str, module: str) -> Path | None:
    dist = metadata.distribution(dist_name)
    for candidate in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
        path = Path(dist.locate_file(candidate))
        if path.is_file():
            return path
    return None


def _find(tree: ast.Module, qualname: str):
    node = tree
    for part in qualname.split("."):
        body = getattr(node, "body", [])
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
    return node


def _names_called(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


def _check_target(target: Target, fn) -> list[str]:
    if target.role != "init":
        return []
    problems = []
    params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    missing = [p for p in INIT_PARAMETERS if p not in params]
    if missing:
        problems.append(f"{target} has no parameter(s) {missing}")
    guarded = any(
        isinstance(node, ast.If) and "is_initialized" in _names_called(node.test)
        and "init_process_group" in _names_called(node)
        for node in ast.walk(fn)
    )
    if not guarded:
        problems.append(f"{target} no longer calls init_process_group behind is_initialized()")
    return problems


def shape_problems(family: Family, dist_name: str) -> list[str]:
    """What differs between the installed vLLM and what ``family`` wraps; empty when it fits."""
    problems: list[str] = []
    trees: dict[str, ast.Module | None] = {}
    for target in family.targets:
        if target.module not in trees:
            path = _source_of(dist_name, target.module)
            trees[target.module] = ast.parse(path.read_text()) if path else None
        tree = trees[target.module]
        fn = _find(tree, target.qualname) if tree is not None else None
        if fn is None:
            if not target.optional:
                where = "module" if tree is None else "function"
                problems.append(f"{target}: {where} not found")
            continue
        problems += _check_target(target, fn)
    return problems
