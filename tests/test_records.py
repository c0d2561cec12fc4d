"""The recorder's file of run rows (tests/support/record.py), on copies in a temporary directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from support import record

ROOT = Path(__file__).resolve().parents[1]


def copies(tmp_path: Path) -> tuple[Path, Path]:
    for name in ("compat_matrix.yaml", "compat_records.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path / "compat_matrix.yaml", tmp_path / "compat_records.yaml"


def test_rows_left_in_the_matrix_by_an_older_recorder_move_to_the_records(tmp_path):
    matrix, records = copies(tmp_path)
    before = record.load_records(records)
    changed = {**before[0], "date": "2099-01-01"}
    changed.pop("test_set")
    added = {**changed, "version": "9.9.9"}
    block = yaml.safe_dump([{k: v for k, v in r.items() if k != "test_set"} for r in before[1:3]] + [changed, added],
                           sort_keys=False)
    matrix.write_text(matrix.read_text() + "\nresults:\n" + block)
    assert record.migrate(matrix) == 2  # the same runs stay as they are; a newer run and a new release move
    after = record.load_records(records)
    assert "results" not in yaml.safe_load(matrix.read_text())
    assert len(after) == len(before) + 1
    moved = {(r["version"], r["tier"]): r for r in after}
    assert moved[(changed["version"], changed["tier"])]["date"] == "2099-01-01"
    assert moved[("9.9.9", added["tier"])]["test_set"] == record.UNKNOWN_TEST_SET
    assert record.migrate(matrix) == 0


def test_test_sets_are_hashes_of_the_tiers_files_and_every_row_is_stale_until_rerun():
    sets = {tier: record.test_set(tier) for tier in record.TEST_SETS}
    assert all(len(h) == 12 and int(h, 16) >= 0 for h in sets.values()) and len(set(sets.values())) == len(sets)
    rows = record.load_records()
    assert record.stale(rows) == [r for r in rows if r["test_set"] != sets[r["tier"]]]


def test_a_run_that_selected_no_stock_test_says_stock_was_not_run(tmp_path, monkeypatch):
    matrix, _ = copies(tmp_path)
    monkeypatch.setattr(record, "_vllm", lambda: ("vllm", "9.9.9"))
    monkeypatch.setattr(record.md, "version", lambda name: "0.0")  # torch's, which this test does not need
    monkeypatch.setattr(record, "test_set", lambda tier, root: "0123456789ab")
    shim_only = {"tests/test_pg_tier.py::test_pg_tier_with_shim[world2]": "passed"}
    row = record.record(shim_only, matrix, "test_pg_tier.py", {}, left_out=13)
    assert (row["stock"], row["shim"], row["tests"]) == ("not run", "partial", "1 passed, 0 failed, 13 not run")
    stock_test = next(iter(record.TIERS["test_pg_tier.py"][1]))
    row = record.record({**shim_only, f"tests/test_pg_tier.py::{stock_test}": "failed"}, matrix, "test_pg_tier.py",
                        {}, left_out=12)
    assert row["stock"] == "failure not reproduced"
