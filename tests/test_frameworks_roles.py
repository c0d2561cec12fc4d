"""The decisions the framework shapes rest on, as unit cases on stand-ins (the real engines: test_frameworks.py).

- vLLM's torchrun data-parallel layout (external launcher, TP×DP = the host's WORLD) is vLLM's own sharing of the
  host's WORLD on every release: the world size vLLM passes spans DP from 0.11 (the v1 family) and is TP×PP
  before it, where vLLM offsets the ranks by DP inside.
- External launcher engines on every host rank at once (TRL's colocate, verl's dp × tp): vLLM's data parallelism
  over the host's WORLD, as stock, in the families that lay it there; found out by the ranks counting themselves
  in the host's store within ``VLLM_PG_SHIM_LAUNCHER_WAIT``; an engine on only some ranks gets private blocks.
- Launcher blocks (TP=2 pairs on some ranks of a 4-rank WORLD) name vLLM's host-wide resources after where they met.
- ``VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1`` where vLLM would get a private world: refused at once, by name.
"""
from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from vllm_pg_shim import ShimError, roles, world  # noqa: E402
from vllm_pg_shim.patches import v0_and_v1, v1  # noqa: E402


def host(monkeypatch, *, size: int, rank: int, dp: int = 1, backend: str = "external_launcher"):
    """A foreign host WORLD of ``size`` with this process at ``rank``, and vLLM's current parallel config."""
    monkeypatch.setattr(world, "host_world_state", lambda: "foreign")
    monkeypatch.setattr(world, "current_private", lambda: None)
    monkeypatch.setattr(world, "host_default_group", lambda: types.SimpleNamespace(size=lambda: size,
                                                                                  rank=lambda: rank))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: size)
    config = types.SimpleNamespace(data_parallel_size=dp, distributed_executor_backend=backend)
    monkeypatch.setattr(roles, "parallel_config", lambda: config)


def launcher_call(world_size: int, rank: int) -> dict:
    return {"world_size": world_size, "rank": rank, "distributed_init_method": "env://"}


@pytest.mark.parametrize("rank", [0, 1])
def test_vllms_torchrun_dp_example_shares_the_hosts_world_in_the_v1_family(monkeypatch, rank):
    """0.11+: TP=1, DP=2 on 2 ranks: vLLM passes world_size 2 (TP×DP), which is the host's."""
    host(monkeypatch, size=2, rank=rank, dp=2)
    assert roles.world_size_built(launcher_call(2, rank), v1) == 2
    assert roles.shares_host_world(launcher_call(2, rank), v1)


def test_before_0_11_vllm_passes_tp_times_pp_and_offsets_dp_inside(monkeypatch):
    host(monkeypatch, size=2, rank=1, dp=2)
    assert roles.world_size_built(launcher_call(1, 1), v0_and_v1) == 2
    assert roles.shares_host_world(launcher_call(1, 1), v0_and_v1)


def test_other_executors_keep_vllms_dp_offset_in_every_family(monkeypatch):
    host(monkeypatch, size=4, rank=0, dp=2, backend="uni")
    assert roles.world_size_built(launcher_call(2, 0), v1) == 4


def test_trl_colocate_tp1_on_two_ranks_is_not_the_hosts_world_alone(monkeypatch):
    host(monkeypatch, size=2, rank=1, dp=1)
    assert not roles.shares_host_world(launcher_call(1, 1), v1)
    assert roles.launcher_block(launcher_call(1, 1)) == (1, 0)


def arrive(store, ranks: int, wait: float, delays: list[float]) -> list[bool]:
    """Host ranks (threads) arriving after ``delays`` seconds; what each decided."""
    import threading
    import time

    decided: list = [None] * len(delays)

    def rank(i):
        time.sleep(delays[i])
        decided[i] = roles.every_host_rank_arrives(store, ranks, wait)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return decided


def test_ranks_that_all_arrive_within_the_wait_go_together():
    assert arrive(torch.distributed.HashStore(), 3, 5.0, [0.0, 0.3, 0.6]) == [True, True, True]


def test_ranks_that_do_not_all_arrive_go_apart_and_a_late_rank_follows_them():
    store = torch.distributed.HashStore()
    assert arrive(store, 4, 0.3, [0.0, 0.0]) == [False, False]  # two of four: an engine on some ranks
    assert arrive(store, 4, 0.3, [0.0, 0.0]) == [False, False]  # the other two, late: the first word stands


def test_every_rank_building_together_lays_data_parallel_over_the_hosts_world_in_the_v1_family(monkeypatch):
    host(monkeypatch, size=4, rank=3)
    store = torch.distributed.HashStore()
    monkeypatch.setattr(roles, "arrival_store", lambda size: store)
    store.add("arrived", 3)  # the other three ranks are here
    assert roles.lays_data_parallel_over_host_world(launcher_call(2, 3), v1)
    assert not roles.lays_data_parallel_over_host_world(launcher_call(2, 3), v0_and_v1)  # keeps private blocks


@pytest.mark.parametrize("call", [launcher_call(3, 1), launcher_call(4, 1), {**launcher_call(2, 1), "rank": 0},
                                  {**launcher_call(2, 1), "distributed_init_method": "tcp://127.0.0.1:1"}])
def test_what_is_not_a_block_of_the_hosts_world_never_waits(monkeypatch, call):
    host(monkeypatch, size=4, rank=1)
    monkeypatch.setattr(roles, "arrival_store", lambda size: pytest.fail("waited"))
    assert not roles.lays_data_parallel_over_host_world(call, v1)


def test_only_vllms_external_launcher_executor_waits(monkeypatch):
    host(monkeypatch, size=2, rank=1, backend="mp")
    monkeypatch.setattr(roles, "arrival_store", lambda size: pytest.fail("waited"))
    assert not roles.lays_data_parallel_over_host_world(launcher_call(1, 1), v1)


def test_a_launcher_wait_of_0_never_waits(monkeypatch):
    host(monkeypatch, size=2, rank=1)
    monkeypatch.setenv("VLLM_PG_SHIM_LAUNCHER_WAIT", "0")
    monkeypatch.setattr(roles, "arrival_store", lambda size: pytest.fail("waited"))
    assert not roles.lays_data_parallel_over_host_world(launcher_call(1, 1), v1)


def test_launcher_blocks_name_vllms_host_wide_resources_after_where_they_met(monkeypatch):
    monkeypatch.setattr(roles, "_named", {})
    monkeypatch.setenv("VLLM_DIST_IDENT", "//")  # what vLLM's CPU worker sets for env://
    roles.name_after_meeting_place(v1, "vllm_pg_shim-launcher-2-1-1")
    assert roles.os.environ["VLLM_DIST_IDENT"] == "//-vllm_pg_shim-launcher-2-1-1"
    # the next engine: vLLM's worker set it again, or left ours; either way one suffix, the new place's
    roles.name_after_meeting_place(v1, "vllm_pg_shim-launcher-2-1-2")
    assert roles.os.environ["VLLM_DIST_IDENT"] == "//-vllm_pg_shim-launcher-2-1-2"
    monkeypatch.setenv("VLLM_DIST_IDENT", "//")
    roles.name_after_meeting_place(v1, "vllm_pg_shim-launcher-2-1-3")
    assert roles.os.environ["VLLM_DIST_IDENT"] == "//-vllm_pg_shim-launcher-2-1-3"


def test_a_family_without_naming_variables_or_an_unset_one_changes_nothing(monkeypatch):
    monkeypatch.delenv("VLLM_DIST_IDENT", raising=False)
    roles.name_after_meeting_place(v1, "somewhere")
    roles.name_after_meeting_place(None, "somewhere")
    assert "VLLM_DIST_IDENT" not in roles.os.environ


def test_split_group_in_a_private_world_is_refused_at_once_naming_the_variable(monkeypatch):
    host(monkeypatch, size=2, rank=1)
    monkeypatch.setenv("VLLM_PG_SHIM_LAUNCHER_WAIT", "0")  # an engine on this rank only: a private world
    monkeypatch.setenv("VLLM_DISTRIBUTED_USE_SPLIT_GROUP", "1")
    made = []
    monkeypatch.setattr(world, "new_private_world", lambda label: made.append(label))

    def init_distributed_environment(world_size=-1, rank=-1, distributed_init_method="env://"):
        pytest.fail("vLLM's init ran")

    with pytest.raises(ShimError, match="VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1.*Unset it"):
        roles.init(init_distributed_environment, None, (), launcher_call(1, 1), family_module=v1)
    assert made == []


@pytest.mark.parametrize("value", ["0", ""])
def test_split_group_off_is_not_refused(monkeypatch, value):
    monkeypatch.setenv("VLLM_DISTRIBUTED_USE_SPLIT_GROUP", value)
    roles.refuse_what_a_private_world_cannot_carry(v1)


def test_split_group_where_vllm_shares_the_hosts_world_is_vllms_own_business(monkeypatch):
    host(monkeypatch, size=2, rank=1)
    monkeypatch.setenv("VLLM_DISTRIBUTED_USE_SPLIT_GROUP", "1")
    calls = []

    def init_distributed_environment(world_size=-1, rank=-1, distributed_init_method="env://"):
        calls.append((world_size, rank))

    roles.init(init_distributed_environment, None, (), launcher_call(2, 1), family_module=v1)
    assert calls == [(2, 1)]
