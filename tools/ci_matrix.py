"""The lists in .github/workflows/ci.yml that come from elsewhere: the pg tier's releases (compat_matrix.yaml's
``tiers.pg-gloo.versions``) and the unit layer's Pythons (pyproject.toml's classifiers).

``python tools/ci_matrix.py`` rewrites them between their ``# generated:<name>:start/end`` markers;
``--check`` exits 1 when the workflow differs (tests/unit/test_ci_workflow.py runs the same check).
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
MATRIX = ROOT / "compat_matrix.yaml"
PYPROJECT = ROOT / "pyproject.toml"
MARKER = re.compile(r"^(?P<indent> *)# generated:(?P<name>[a-z-]+):start\n(?P<body>.*?)"
                    r"^(?P=indent)# generated:(?P=name):end$", re.M | re.S)


def pg_releases(matrix_path: Path = MATRIX) -> list[str]:
    return [str(v) for v in yaml.safe_load(matrix_path.read_text())["tiers"]["pg-gloo"]["versions"]]


def python_versions(pyproject: Path = PYPROJECT) -> list[str]:
    """The ``Programming Language :: Python :: 3.N`` classifiers, in order (read without tomllib: Python 3.9)."""
    return re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject.read_text())


def flow_list(key: str, values: list[str], indent: str, width: int = 120) -> str:
    """``key: ["a", "b", ...]`` wrapped at ``width``, continuation lines aligned after the bracket."""
    head = f"{indent}{key}: ["
    items = ", ".join(f'"{v}"' for v in values)
    lines = textwrap.wrap(items, width=width - len(head) - 1, break_long_words=False, break_on_hyphens=False)
    pad = " " * len(head)
    return "\n".join([head + lines[0], *(pad + line for line in lines[1:])]) + "]"


def blocks() -> dict[str, tuple[str, list[str]]]:
    """marker name -> (the YAML key it holds, the values it must hold)"""
    return {"pg-releases": ("release", pg_releases()), "python-versions": ("python", python_versions())}


def render(text: str) -> str:
    wanted = blocks()

    def fill(match: re.Match) -> str:
        name, indent = match["name"], match["indent"]
        key, values = wanted[name]
        return (f"{indent}# generated:{name}:start\n{flow_list(key, values, indent)}\n"
                f"{indent}# generated:{name}:end")

    found = {m["name"] for m in MARKER.finditer(text)}
    if found != set(wanted):
        raise SystemExit(f"{WORKFLOW}: expected generated blocks {sorted(wanted)}, found {sorted(found)}")
    return MARKER.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the workflow is not current")
    args = parser.parse_args(argv)
    text = WORKFLOW.read_text()
    fresh = render(text)
    if args.check:
        if fresh != text:
            print(f"{WORKFLOW.relative_to(ROOT)} is stale: run python tools/ci_matrix.py", file=sys.stderr)
            return 1
        return 0
    WORKFLOW.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
