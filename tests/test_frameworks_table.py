"""docs/frameworks.md is generated from docs/frameworks.yaml (what real runs of tests/test_frameworks.py showed)."""
from support.framework_results import SHAPES, TABLE, load, readme_summary, render, render_summary


def test_the_frameworks_table_is_generated_from_the_recorded_results():
    assert TABLE.read_text() == render(load()), "stale: run python tests/support/framework_results.py"


def test_the_readmes_frameworks_table_is_generated_from_the_recorded_results():
    assert readme_summary() == render_summary(load()), "stale: run python tests/support/framework_results.py"


def test_every_recorded_result_names_a_known_shape_its_outcome_vllm_torch_and_date():
    for shape, sides in (load().get("results") or {}).items():
        assert shape in SHAPES, shape
        for side, result in sides.items():
            assert side in ("stock", "shim") and {"outcome", "vllm", "torch", "date"} <= set(result), result
