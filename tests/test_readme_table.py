import yaml

from support.matrix_table import ROOT, current, render
from support.record import TEST_SETS, UNKNOWN_TEST_SET, load_records


def test_readme_table_is_generated_from_the_matrix():
    matrix = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
    assert current() == render(matrix), "README table is stale: run python tests/support/matrix_table.py"


def test_every_recorded_result_names_version_torch_tier_date_outcomes_and_test_set():
    for r in load_records():
        assert {"version", "distribution", "torch", "tier", "date", "stock", "shim", "tests", "test_set"} <= set(r), r
        assert r["tier"] in TEST_SETS and (r["test_set"] == UNKNOWN_TEST_SET or len(r["test_set"]) == 12), r


def test_the_matrix_holds_no_run_records():
    """install() reads compat_matrix.yaml: its rows live in compat_records.yaml (record.py --migrate moves them)."""
    assert "results" not in yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
