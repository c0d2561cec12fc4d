"""docs/nodes.md's table is generated from the outcomes tests/test_nodes.py recorded (docs/nodes.json)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import nodes_table  # noqa: E402


def test_the_nodes_page_is_generated_from_the_recorded_outcomes():
    assert nodes_table.current() == nodes_table.render(json.loads(nodes_table.RESULTS.read_text())), \
        "docs/nodes.md is stale: run python tools/nodes_table.py"


def test_every_scenario_has_a_stock_and_a_shim_outcome():
    results = json.loads(nodes_table.RESULTS.read_text())
    for case in nodes_table.SHAPES:
        assert {"stock", "shim"} <= set(results.get(case, {})), case
