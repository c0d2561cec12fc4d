"""The compatibility tables are generated from compat_matrix.yaml and compat_records.yaml: the full one in
docs/compatibility.md and the README's line per family never differ from them."""
import yaml

from support.matrix_table import COMPAT_PAGE, README, ROOT, SUMMARY, current, render, render_summary
from support.record import TEST_SETS, UNKNOWN_TEST_SET, load_records

STALE = "is stale: run python tests/support/matrix_table.py"


def matrix() -> dict:
    return yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())


def test_the_compatibility_page_is_generated_from_the_matrix():
    assert current(COMPAT_PAGE) == render(matrix(), test_sets=True), f"{COMPAT_PAGE.name} {STALE}"


def test_the_readmes_family_summary_is_generated_from_the_matrix():
    assert current(README, SUMMARY) == render_summary(matrix()), f"the README's family summary {STALE}"


def test_every_recorded_result_names_version_torch_tier_date_outcomes_and_test_set():
    for r in load_records():
        assert {"version", "distribution", "torch", "tier", "date", "stock", "shim", "tests", "test_set"} <= set(r), r
        digest = r["test_set"].removesuffix("-partial")  # a run that left some of the tier's tests out
        assert r["tier"] in TEST_SETS and (r["test_set"] == UNKNOWN_TEST_SET or len(digest) == 12), r
        assert r["shim"] in ("pass", "fail", "partial") and (r["shim"] == "partial") <= r["test_set"].endswith(
            "-partial"), r


def test_the_matrix_holds_no_run_records():
    """install() reads compat_matrix.yaml: its rows live in compat_records.yaml (record.py --migrate moves them)."""
    assert "results" not in matrix()


def test_the_readme_stays_short_and_keeps_its_sections():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "the README is for a newcomer: details belong in docs/"
    for heading in ("## Install", "## Use", "## Environment variables", "## Compatibility", "## Frameworks",
                    "## Limits", "## Tests and demo", "## Links"):
        assert f"\n{heading}\n" in text, heading


def test_every_relative_link_in_the_readme_and_docs_resolves():
    import re

    broken = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target == "docs/frameworks.md" and "**Placeholder:**" in text:
                continue  # the Frameworks section's page comes with the change that fills that section in
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
