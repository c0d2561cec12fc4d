"""The compatibility tables, rendered from compat_matrix.yaml (families) and compat_records.yaml (runs)
(tests/test_readme_table.py checks them): the full table in docs/compatibility.md, each row naming its test set,
and one line per family in the README.

``python tests/support/matrix_table.py`` rewrites both between their markers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

if not __package__:  # run as a script: the support package is in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.record import load_records, records_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- compat-table:start -->", "<!-- compat-table:end -->"
SUMMARY = ("<!-- family-summary:start -->", "<!-- family-summary:end -->")
COMPAT_PAGE = ROOT / "docs" / "compatibility.md"
README = ROOT / "README.md"


def render(matrix: dict, records: list[dict] | None = None, *, test_sets: bool = False) -> str:
    """The families of ``matrix`` and the run rows (``records``: compat_records.yaml's when not given);
    ``test_sets`` adds the column naming each row's test set."""
    if records is None:
        records = load_records()
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


def _release(version: str) -> str:
    from packaging.version import Version

    v = Version(version)
    return ".".join(map(str, v.release)) + (f".post{v.post}" if v.post is not None else "")


def _version_key(version: str):
    from packaging.version import Version

    return Version(version)


def render_summary(matrix: dict, records: list[dict] | None = None) -> str:
    """One line per family: its releases and, per tier, how many of the releases run passed with the shim."""
    from packaging.specifiers import SpecifierSet

    results = load_records() if records is None else records
    lines = ["| family | vLLM releases | passed with the shim (tier: releases passed of releases run) |",
             "|---|---|---|"]
    for name, fam in matrix["families"].items():
        covered = SpecifierSet(str(fam["releases"]))
        per_tier: dict[str, dict[str, bool]] = {tier: {} for tier in matrix.get("tiers") or {}}
        for r in results:
            if covered.contains(_release(str(r["version"])), prereleases=False):
                tier = r["tier"] if r["distribution"] == "vllm" else f"{r['tier']} ({r['distribution']})"
                ran = per_tier.setdefault(tier, {})
                ran[str(r["version"])] = ran.get(str(r["version"]), False) or r["shim"] == "pass"
        parts = []
        for tier, ran in per_tier.items():
            if not ran:
                continue
            passed = sorted((v for v, ok in ran.items() if ok), key=_version_key)
            span = f", {passed[0]} to {passed[-1]}" if len(passed) > 1 else (f", {passed[0]}" if passed else "")
            partial = sorted((r["version"] for r in results if r["shim"] == "partial" and str(r["version"]) in ran
                              and not ran[str(r["version"])] and r["tier"] == tier.split(" ")[0]), key=_version_key)
            span += f" (partial runs, some of the tier's tests: {', '.join(partial)})" if partial else ""
            parts.append(f"{tier}: {len(passed)} of {len(ran)}{span}")
        lines.append(f"| `{name}` | `{fam['releases']}` | {'; '.join(parts) or 'no recorded run'} |")
    torches = sorted({str(r["torch"]) for r in results}, key=_version_key)
    pythons = sorted({m.split("Python ", 1)[1] for m in (str(r.get("machine", "")) for r in results)
                      if "Python " in m}, key=_version_key)
    lines += ["", f"torch versions tested: {', '.join(torches) or 'none yet'}. "
                  f"Python versions of those runs: {', '.join(pythons) or 'none yet'}."]
    return "\n".join(lines)


def _between(text: str, markers: tuple[str, str]) -> str:
    return text.partition(markers[0])[2].partition(markers[1])[0].strip("\n")


def _replace_between(path: Path, markers: tuple[str, str], body: str) -> None:
    text = path.read_text()
    if markers[0] not in text or markers[1] not in text:
        raise SystemExit(f"{path} has no {markers[0]} ... {markers[1]} markers to write the table between")
    head, _, rest = text.partition(markers[0])
    _, _, tail = rest.partition(markers[1])
    path.write_text(f"{head}{markers[0]}\n{body}\n{markers[1]}{tail}")


def rewrite(matrix_path: Path = ROOT / "compat_matrix.yaml") -> None:
    matrix, records = yaml.safe_load(matrix_path.read_text()), load_records(records_path(matrix_path))
    _replace_between(COMPAT_PAGE, (START, END), render(matrix, records, test_sets=True))
    _replace_between(README, SUMMARY, render_summary(matrix, records))


def current(page: Path = COMPAT_PAGE, markers: tuple[str, str] = (START, END)) -> str:
    return _between(page.read_text(), markers)


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
