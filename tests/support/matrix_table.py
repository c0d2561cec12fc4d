"""The compatibility table, rendered from compat_matrix.yaml (families) and compat_records.yaml (runs);
tests/test_readme_table.py checks the README's copy.

``python tests/support/matrix_table.py`` rewrites the table between the README's markers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

if not __package__:  # run as a script: the support package is in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.record import load_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- compat-table:start -->", "<!-- compat-table:end -->"


def render(matrix: dict, records: list[dict] | None = None, *, test_sets: bool = False) -> str:
    """The families of ``matrix`` and the run rows (``records``: compat_records.yaml's when not given);
    ``test_sets`` adds the column naming each row's test set."""
    if records is None:
        records = matrix["results"] if "results" in matrix else load_records()
    lines = ["| family | vLLM releases | patch module |", "|---|---|---|"]
    for name, fam in matrix["families"].items():
        lines.append(f"| `{name}` | `{fam['releases']}` | `patches/{fam['module']}.py` |")
    extra = (" test set |", "---|") if test_sets else ("", "")
    lines += ["", "| vLLM | torch | tier | machine | date | stock | with the shim | tests |" + extra[0],
              "|---|---|---|---|---|---|---|---|" + extra[1]]
    for r in records:
        lines.append(f"| {r['version']} ({r['distribution']}) | {r['torch']} | {r['tier']} | {r['machine']} | "
                     f"{r['date']} | {r['stock']} | **{r['shim']}** | {r['tests']} |"
                     + (f" {r.get('test_set', 'unknown')} |" if test_sets else ""))
    if not records:
        lines.append("| (no recorded run yet) | | | | | | | |" + (" |" if test_sets else ""))
    return "\n".join(lines)


def rewrite(readme: Path = ROOT / "README.md", matrix_path: Path = ROOT / "compat_matrix.yaml") -> None:
    text = readme.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    table = render(yaml.safe_load(matrix_path.read_text()), load_records(matrix_path))
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def current(readme: Path = ROOT / "README.md") -> str:
    text = readme.read_text()
    return text.partition(START)[2].partition(END)[0].strip("\n")


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
