"""The README's compatibility table, rendered from compat_matrix.yaml (tests/test_readme_table.py checks it).

``python tests/support/matrix_table.py`` rewrites the table between the README's markers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- compat-table:start -->", "<!-- compat-table:end -->"


def render(matrix: dict) -> str:
    lines = ["| family | vLLM releases | patch module |", "|---|---|---|"]
    for name, fam in matrix["families"].items():
        lines.append(f"| `{name}` | `{fam['releases']}` | `patches/{fam['module']}.py` |")
    lines += ["", "| vLLM | torch | tier | machine | date | stock | with the shim | tests |",
              "|---|---|---|---|---|---|---|---|"]
    for r in matrix.get("results") or []:
        lines.append(f"| {r['version']} ({r['distribution']}) | {r['torch']} | {r['tier']} | {r['machine']} | "
                     f"{r['date']} | {r['stock']} | **{r['shim']}** | {r['tests']} |")
    if not matrix.get("results"):
        lines.append("| (no recorded run yet) | | | | | | | |")
    return "\n".join(lines)


def rewrite(readme: Path = ROOT / "README.md", matrix_path: Path = ROOT / "compat_matrix.yaml") -> None:
    text = readme.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    table = render(yaml.safe_load(matrix_path.read_text()))
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def current(readme: Path = ROOT / "README.md") -> str:
    text = readme.read_text()
    return text.partition(START)[2].partition(END)[0].strip("\n")


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
