"""docs/benchmarks/README.md and the README's table are generated from results.json (``nox -s bench``): they
never differ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.bench import DEFAULT_OUT, README_BLOCK, ROOT, readme_block, table


@pytest.mark.parametrize("out", [DEFAULT_OUT, DEFAULT_OUT / "gpu"], ids=["cpu", "gpu"])
def test_bench_table_matches_results(out):
    results = out / "results.json"
    if not results.exists():
        pytest.skip("no benchmark results yet (nox -s bench writes them)")
    assert (out / "README.md").read_text() == table(json.loads(results.read_text())), (
        f"{out / 'README.md'} differs from results.json: run `python tests/support/bench.py --render --out {out}`")
    readme = (ROOT / "README.md").read_text()
    if out == DEFAULT_OUT and README_BLOCK[0] in readme:
        assert readme_block(json.loads(results.read_text())) in readme, (
            "the README's benchmark table differs from results.json: run `python tests/support/bench.py --render`")
