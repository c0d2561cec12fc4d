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
