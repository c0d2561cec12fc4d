"""The private-world mechanism on real torch.distributed (gloo), each case in a bounded 2-rank host WORLD."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.harness import _read_ranks, run_bounded

SCRIPT = Path(__file__).with_name("support") / "world_scenario.py"


def run_case(tmp_path, case, *, timeout=90, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env.update(env_extra or {})
    returncode, timed_out, elapsed, leftovers = run_bounded(
        [sys.executable, str(SCRIPT), case, str(tmp_path)], timeout=timeout, env=env, log_path=tmp_path / "log")
    log = (tmp_path / "log").read_text()
    ranks = _read_ranks(tmp_path)
    missing = [r for r in (0, 1) if "done" not in [s for s, _ in ranks.get(r, {}).get("stages", [])]]
    assert not timed_out, f"ranks {missing} never finished within {timeout}s:\n{log[-3000:]}"
    assert returncode == 0 and not missing and not leftovers, log[-3000:]
    return ranks


def test_private_world_reuses_vllm_group_names_without_touching_the_hosts(tmp_path):
    for r in run_case(tmp_path, "isolated_names").values():
        assert r["private_names"] == ["0", "1"]  # as in a clean vLLM process
        assert all(n.startswith("vllm_pg_shim.") for n in r["private_registry_names"])
        assert r["private_sub_name"].startswith("vllm_pg_shim.") and r["private_ok"]
        assert r["host_names_during"] == ["0", "1"]  # the host's default and its subgroup only
        assert r["host_default_resolves"] and r["host_sub_resolves"] and r["host_world_is_host"]
        assert r["host_sum_during"] == 3.0 and r["host_new_group_name"] == "2"
        assert r["router_after"] is False and r["host_sum_after"] == 3.0
        assert r["host_default_resolves_after"] and r["private_name_gone"]


def test_private_world_of_two_runs_beside_host_collectives_in_another_thread(tmp_path):
    for rank, r in run_case(tmp_path, "shared_private_world").items():
        assert r["host_ok"] and r["private_errors"] == []
        assert r["broadcast_from_private_rank1"] == 0.0  # host rank 0 is private rank 1
        assert r["host_rank"] == rank and r["private_rank_outside_scope"] == 1 - rank
        assert r["object_from_private_rank1"] == {"from_private_rank": 1}
        assert r["object_collectives_routed"] and r["object_collectives_restored"]
        assert r["host_sum_after"] == 3.0


def test_rendezvous_timeout_names_who_arrived_and_who_is_missing(tmp_path):
    ranks = run_case(tmp_path, "rendezvous_timeout", env_extra={"VLLM_PG_SHIM_TIMEOUT": "3"})
    r0 = ranks[0]
    assert r0["arrived"] == [0] and r0["missing"] == [1]
    assert "ranks arrived [0], missing [1]" in r0["error"] and "VLLM_PG_SHIM_TIMEOUT=3s" in r0["error"]
    assert 2.5 <= r0["elapsed"] < 10
    assert r0["router_after"] is False
    assert r0["host_sum_after"] == 3.0 and ranks[1]["host_sum_after"] == 3.0


def test_host_teardown_leaves_vllms_private_world_alone(tmp_path):
    for r in run_case(tmp_path, "host_teardown_spares_private").values():
        assert r["host_initialized_after"] is False
        assert r["private_name_still_registered"] and r["private_still_works"]
        assert r["router_after"] is False


def test_private_teardown_frees_gloo_backends_after_their_groups(tmp_path):
    """torch < 2.8 frees a group holding the GIL while its gloo workers end, and a worker may need the GIL (vLLM
    0.7.0's forked TP worker hung so on torch 2.5.1): the teardown role keeps the backends until the groups are
    gone, so they end in their own destructor, which releases the GIL."""
    for r in run_case(tmp_path, "private_teardown_frees_gloo_backends_last").values():
        assert r["groups_after_destroy"] == 0 and r["backends_held"] == 2 and r["held_backends_usable"]
        assert r["backends_held_after_block"] == 0
        assert r["router_after"] is False and r["host_sum_after"] == 3.0


@pytest.mark.parametrize("value", ["abc", "-1", "0", "inf"])
def test_bad_timeout_values_warn_and_are_ignored(value, recwarn):
    from vllm_pg_shim import _env

    _env._warned.clear()
    assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) is None
    assert any("VLLM_PG_SHIM_TIMEOUT" in str(w.message) for w in recwarn)
