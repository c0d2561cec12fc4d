"""docs/benchmarks/README.md and the table in docs/performance.md are generated from results.json
(``nox -s bench``): they never differ."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench import DEFAULT_OUT, PERFORMANCE_PAGE, TABLE_MARKERS, performance_block, table  # noqa: E402


@pytest.mark.parametrize("out", [DEFAULT_OUT, DEFAULT_OUT / "gpu"], ids=["cpu", "gpu"])
def test_bench_table_matches_results(out):
    results = out / "results.json"
    if not results.exists():
        pytest.skip("no benchmark results yet (nox -s bench writes them)")
    assert (out / "README.md").read_text() == table(json.loads(results.read_text())), (
        f"{out / 'README.md'} differs from results.json: run `python tools/bench.py --render --out {out}`")


def test_the_performance_page_shows_the_last_cpu_run():
    page = PERFORMANCE_PAGE.read_text()
    assert TABLE_MARKERS[0] in page, f"{PERFORMANCE_PAGE} lost its table markers"
    assert performance_block(json.loads((DEFAULT_OUT / "results.json").read_text())) in page, (
        "docs/performance.md's table differs from results.json: run `python tools/bench.py --render`")
