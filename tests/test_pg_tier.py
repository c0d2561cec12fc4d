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

from support.harness import _read_ranks, log_tail, run_bounded, run_python
from support.pg_scenario import dp_group_size, vllm_release

pytestmark = pytest.mark.pg
if importlib.util.find_spec("vllm") is None:  # found, not imported: its __init__ needs the whole engine
    pytest.skip("the process-group tier needs a vLLM release installed", allow_module_level=True)

SCRIPT = Path(__file__).with_name("support") / "pg_scenario.py"
# vLLM's distributed initialisation takes about a second here: 25 s without progress once vLLM is imported is a
# hang (measured from that stage, so a slow import on a loaded machine is not mistaken for one).
STOCK_BOUND = 25
# With the shim nothing should hang: this only bounds a regression (4 ranks importing vLLM on 2 loaded cores).
SHIM_BOUND = 300


def run_pg(tmp_path, *, world, engines, activation, timeout, stall_after=None, launcher=False, dp=False,
           world_size_patched=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM_") or k == "VLLM_PG_SHIM_BARE_IMPORT"}
    env.pop("VLLM_PG_SHIM", None)
    flags = {"--launcher": launcher, "--dp": dp, "--world-size-patched": world_size_patched}
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--world", str(world), "--engines", engines,
           "--activation", activation] + [flag for flag, wanted in flags.items() if wanted]
    ranks_expected = world

    def finished():
        ranks = _read_ranks(tmp_path)
        return len(ranks) == ranks_expected and all("done" in [s for s, _ in r["stages"]] for r in ranks.values())

    def stalled():
        """a rank imported vLLM, and no rank has reached a new stage for ``stall_after`` seconds since (measured
        from vLLM's import, so a slow import on a loaded machine is not mistaken for a hang)"""
        stages = [stage for r in _read_ranks(tmp_path).values() for stage in r.get("stages", [])]
        return (any(name == "vllm_imported" for name, _ in stages)
                and time.monotonic() - max(t for _, t in stages) > stall_after)

    done = finished if stall_after is None else (lambda: finished() or stalled())
    returncode, timed_out, elapsed, leftovers = run_bounded(cmd, timeout=timeout, env=env, log_path=tmp_path / "log",
                                                            finished=done, **({"exit_grace": 0} if stall_after else {}))
    return returncode, timed_out, _read_ranks(tmp_path), log_tail((tmp_path / "log").read_text()), leftovers


def stages(ranks, r):
    return [s for s, _ in ranks.get(r, {}).get("stages", [])]


SCENARIOS = {  # name: run_pg's arguments (host world size, engines and how they are built)
    "world2-engine-on-rank1": dict(world=2, engines="1"),
    "world4-engines-on-0-2-3": dict(world=4, engines="0/2/3"),
    # a V0-style driver: host rank 0 is vLLM's rank 0 of a TP=2 world and forks vLLM's rank 1
    "world2-tp2-driver-with-forked-worker": dict(world=2, engines="0*2"),
    # external launcher on some ranks: 2 and 3 form one TP=2 engine over env:// while 0 and 1 only train
    "world4-launcher-tp2-on-2-3": dict(world=4, engines="2,3", launcher=True),
    # two launcher engines side by side, each its own block of the host's ranks
    "world4-launcher-tp2-on-0-1-and-2-3": dict(world=4, engines="0,1/2,3", launcher=True),
    # data parallel (vLLM >= 0.8): host ranks 2 and 3 are DP ranks 0 and 1 (TP=1), meeting at vLLM's DP master
    "world4-dp2-on-2-3": dict(world=4, engines="2/3", dp=True),
    # DP=2 x TP=2 over all four host ranks: one private world of 4, not the host's
    "world4-dp2-tp2": dict(world=4, engines="0,1/2,3", dp=True),
}
# The shapes of the frameworks that build vLLM's world inside theirs, without an engine (docs/frameworks.md has them
# on the real engine): stock vLLM is observed in each, release by release, by the tests below.
FRAMEWORK_SHAPES = {
    # TRL's colocate mode and verl's SPMD rollout (TP = WORLD): every host rank builds vLLM's world over the host's
    # env:// with its own rank, then vLLM tears it down; the host's WORLD and a new group must still work
    "world2-launcher-tp2-on-every-rank": dict(world=2, engines="0,1", launcher=True),
    # TRL <= 0.16: host rank 0 alone initialises vLLM under get_world_size() == 1 and holds it while every rank
    # runs the host's collectives (barrier, broadcast_object_list, all_reduce) and makes a new group
    "world2-rank0-alone-world-size-patched": dict(world=2, engines="0", world_size_patched=True),
}
SCENARIOS.update(FRAMEWORK_SHAPES)


def release_source(module: str) -> str:
    """The text of one of the installed release's modules (read, not imported: its package needs the engine)."""
    spec = importlib.util.find_spec("vllm")
    return Path(spec.submodule_search_locations[0], *module.split(".")).with_suffix(".py").read_text()


def skip_where_the_release_cannot_build(spec: dict) -> None:
    """Skip a scenario that the installed release cannot express, stock or with the shim, saying why."""
    from packaging.version import Version

    if spec.get("dp") and Version(vllm_release()).release < (0, 8):
        pytest.skip("vLLM's initialisation offsets ranks for data parallelism from 0.8.0")
    if spec.get("launcher") and spec["engines"] == ",".join(map(str, range(spec["world"]))) and \
            "def get_world_group(" not in release_source("distributed.parallel_state"):
        # 0.5.0: init_distributed_environment makes its CPU world group (and local rank) only where it calls
        # init_process_group itself, so over a WORLD that already exists broadcast_tensor_dict finds none
        pytest.skip(f"vLLM {vllm_release()} makes its world group only when it initialises torch.distributed "
                    "itself (no get_world_group): its world cannot be built over the host's existing WORLD")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pg_tier_with_shim(tmp_path, scenario):
    world, engines, dp = SCENARIOS[scenario]["world"], SCENARIOS[scenario]["engines"], SCENARIOS[scenario].get("dp")
    skip_where_the_release_cannot_build(SCENARIOS[scenario])
    returncode, timed_out, ranks, log, leftovers = run_pg(tmp_path, **SCENARIOS[scenario], activation="install",
                                                          timeout=SHIM_BOUND)
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
        assert all(data.get("teardown", {}).values()), f"vLLM's teardown destroyed the host's WORLD: {data}"
        if rank in engine_tp:
            assert data["vllm_ok"], data
            workers = data.get("forked_workers", {})
            assert all(w["vllm_ok"] for w in workers.values()), workers
            assert data["get_tp_group"]["size"] == engine_tp[rank], data
            if dp:
                assert data["get_dp_group"]["size"] == dp_group_size(len(groups)), data


# Rank 1 never joins rank 0's all_reduce, so rank 0's gloo worker is inside it until the group's 3 s timeout
# when the host tears down: a Python thread must keep running meanwhile (the GIL released), as it must for a
# worker that still needs the GIL to finish (support/host_teardown.py).
TEARDOWN_WHILE_A_WORKER_IS_BUSY = """
import datetime, os, socket, sys, threading, time
import torch, torch.distributed as dist
from support.host_teardown import destroy_process_groups

with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
child = os.fork()
rank = 1 if child == 0 else 0
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=3))
if rank == 1:
    time.sleep(10)
    os._exit(0)
ticks = [0]

def tick():
    while True:
        ticks[0] += 1
        time.sleep(0.01)

threading.Thread(target=tick, daemon=True).start()
work = dist.all_reduce(torch.ones(1), async_op=True)
start, before = time.monotonic(), ticks[0]
destroy_process_groups()
print("RESULT", ticks[0] - before, round(time.monotonic() - start, 1), flush=True)
os.kill(child, 9)
os._exit(0)
"""


def test_host_teardown_releases_the_gil_while_gloo_workers_finish():
    """The scenarios' host teardown (torch < 2.8 frees a group holding the GIL while its gloo workers are joined:
    one still freeing a collective's tensors needs the GIL, and destroy_process_group() never returns)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = run_python(["-c", TEARDOWN_WHILE_A_WORKER_IS_BUSY], env=env, timeout=60)
    result = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, f"stdout:\n{out.stdout[-2000:]}\nstderr:\n{out.stderr[-2000:]}"
    ticks, seconds = int(result[0][0]), float(result[0][1])
    # the teardown waited for the worker (about 3 s); a thread holding no GIL ticks about 100 times a second
    assert seconds < 2 or ticks >= 20 * seconds, f"the GIL was held for {seconds} s of teardown ({ticks} ticks)"


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
                                                  timeout=SHIM_BOUND, stall_after=STOCK_BOUND)
    assert stock_failure(ranks, timed_out, 2), f"stock vLLM did not fail here:\n{log}"


# a rank's last stage -> where it is while it makes no progress
NEXT_STEP = {"host_world_ready": "the host's barrier", "vllm_imported": "vLLM's initialisation",
             "vllm_done": "the host's barrier", "host_barrier": "the host's broadcast_object_list",
             "host_broadcast_object_list": "the host's all_reduce", "host_all_reduce": "the host's new group",
             "host_new_group": "vLLM's teardown", "host_checks_done": "destroying the host's WORLD"}


def observed(ranks: dict, world: int, timed_out: bool) -> str:
    """What a stock run did, read from where its ranks stopped: whether vLLM's teardown destroyed the host's WORLD
    (and in which of its functions), then whether the host went on, hung or failed."""
    teardowns = {r: data["teardown"] for r, data in ranks.items() if data.get("teardown")}
    destroyed_in = sorted({next(name for name, alive in t.items() if not alive)
                           for t in teardowns.values() if not all(t.values())})
    run = sorted({name for t in teardowns.values() for name in t})
    if destroyed_in:
        parts = [f"vLLM's teardown destroys the host's WORLD (in {', '.join(destroyed_in)})"]
    elif teardowns:
        parts = [f"the host's WORLD survives vLLM's teardown ({', '.join(run)})"]
    else:
        parts = []
    unfinished = [r for r in range(world) if "done" not in stages(ranks, r)]
    lost = [r for r in unfinished if stages(ranks, r)[-1:] == ["host_world_destroyed"]]
    stopped = {r: stages(ranks, r)[-1] if stages(ranks, r) else "not started" for r in unfinished if r not in lost}
    errors = {r: ranks[r]["error"] for r in stopped if ranks.get(r, {}).get("error")}
    if lost:
        parts.append(f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} then "
                     f"{'have' if len(lost) > 1 else 'has'} no default process group for the host's collectives")
    if not unfinished:
        parts.append("the host's collectives and a new group work after it")
    elif errors:
        parts.append("; ".join(f"rank {r} fails: {e[:100]}" for r, e in errors.items()))
    elif timed_out:
        where: dict[str, list[str]] = {}
        for r, stage in stopped.items():
            where.setdefault(NEXT_STEP.get(stage, f"the step after {stage}"), []).append(str(r))
        parts.append(f"hangs (no progress for {STOCK_BOUND} s, stopped): " + ", ".join(
            f"rank{'s' if len(rs) > 1 else ''} {', '.join(rs)} in {step}" for step, rs in where.items()))
    elif stopped:
        parts.append(", ".join(f"rank {r} stops after {stage}" for r, stage in stopped.items()))
    return "; ".join(parts)


@pytest.mark.stock_observation
@pytest.mark.parametrize("scenario", FRAMEWORK_SHAPES)
def test_pg_tier_stock_framework_shape(tmp_path, record_property, scenario):
    """Stock vLLM in a framework's shape, observed (never assumed): recorded with the release's row."""
    spec = FRAMEWORK_SHAPES[scenario]
    skip_where_the_release_cannot_build(spec)
    returncode, timed_out, ranks, log, _ = run_pg(tmp_path, **spec, activation="stock", timeout=SHIM_BOUND,
                                                  stall_after=STOCK_BOUND)
    assert ranks, f"the scenario never started:\n{log}"
    record_property(f"stock_{scenario}", observed(ranks, spec["world"], timed_out))
