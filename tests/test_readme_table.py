import yaml

from support.matrix_table import ROOT, current, render


def test_readme_table_is_generated_from_the_matrix():
    matrix = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
    assert current() == render(matrix), "README table is stale: run python tests/support/matrix_table.py"


def test_every_recorded_result_names_version_torch_tier_date_and_outcomes():
    matrix = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
    for r in matrix.get("results") or []:
        assert {"version", "distribution", "torch", "tier", "date", "stock", "shim", "tests"} <= set(r), r
