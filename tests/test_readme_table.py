"""The compatibility tables are generated from compat_matrix.yaml: the full one in docs/compatibility.md and the
README's line per family never differ from the matrix."""
import yaml

from support.matrix_table import COMPAT_PAGE, README, ROOT, SUMMARY, current, render, render_summary

STALE = "is stale: run python tests/support/matrix_table.py"


def matrix() -> dict:
    return yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())


def test_the_compatibility_page_is_generated_from_the_matrix():
    assert current(COMPAT_PAGE) == render(matrix()), f"{COMPAT_PAGE.name} {STALE}"


def test_the_readmes_family_summary_is_generated_from_the_matrix():
    assert current(README, SUMMARY) == render_summary(matrix()), f"the README's family summary {STALE}"


def test_every_recorded_result_names_version_torch_tier_date_and_outcomes():
    for r in matrix().get("results") or []:
        assert {"version", "distribution", "torch", "tier", "date", "stock", "shim", "tests"} <= set(r), r
