"""The private world's pure parts that live beside torch (so these need torch; no process group is made):
the routed maps of vllm_pg_shim.world, external-launcher blocks (roles) and the rank check (rendezvous)."""
from __future__ import annotations

import types

import pytest

pytest.importorskip("torch")

from vllm_pg_shim import ShimError, rendezvous, roles, world  # noqa: E402


class Group:
    """A stand-in for a process group: a hashable non-string key."""


def routed():
    host_group, private_group = Group(), Group()
    host, private = {host_group: "host", "tag": "host-tag"}, {private_group: "private", "tag": "private-tag"}
    return world.RoutedMap(private, [host]), host, private, host_group, private_group


def test_group_keys_fall_through_to_the_world_that_holds_them():
    view, host, private, host_group, private_group = routed()
    assert view[private_group] == "private" and view[host_group] == "host"
    assert host_group in view and private_group in view


def test_string_keys_never_fall_through():
    view, host, _, _, _ = routed()
    assert view["tag"] == "private-tag"
    del view["tag"]
    assert "tag" not in view and host["tag"] == "host-tag"
    with pytest.raises(KeyError):
        view["tag"]


def test_replacing_or_deleting_an_existing_group_reaches_its_world_new_keys_stay_in_the_current_one():
    view, host, private, host_group, _ = routed()
    view[host_group] = "host, replaced"
    assert host[host_group] == "host, replaced" and host_group not in private
    new = Group()
    view[new] = "new"
    assert new in private and new not in host
    del view[host_group]
    assert host_group not in host
    with pytest.raises(KeyError):
        del view[Group()]


def test_iteration_length_and_clear_concern_the_current_world_only():
    view, host, private, host_group, private_group = routed()
    assert set(view) == {private_group, "tag"} and len(view) == 2
    view.clear()
    assert private == {} and len(host) == 2 and len(view) == 0


def host_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setattr(world, "host_default_group", lambda: types.SimpleNamespace(rank=lambda: rank))


@pytest.mark.parametrize("rank,call,block", [
    (3, {"world_size": 2, "rank": 3}, (1, 1)),                                       # ranks 2-3 of 4: block 1
    (2, {"world_size": 2, "rank": -1}, (1, 0)),
    (0, {"world_size": 2, "rank": 0, "distributed_init_method": "env://"}, (0, 0)),
    (5, {"world_size": 1, "rank": 5}, (5, 0)),
    (3, {"world_size": 2, "rank": 1}, None),                                         # vLLM's own numbering
    (3, {"world_size": 2, "rank": 3, "distributed_init_method": "tcp://127.0.0.1:1"}, None),
    (3, {"world_size": 0, "rank": 3}, None), (3, {"world_size": -1, "rank": 3}, None), (3, {"rank": 3}, None),
])
def test_launcher_blocks_are_aligned_blocks_of_the_host_ranks(monkeypatch, rank, call, block):
    host_rank(monkeypatch, rank)
    assert roles.launcher_block(call) == block


@pytest.mark.parametrize("size,rank", [(2, 2), (2, 5), (1, 1), (4, -2)])
def test_a_rank_outside_the_private_world_is_refused(size, rank):
    with pytest.raises(ShimError, match=f"size {size} as rank {rank}; its ranks are 0..{size - 1}"):
        rendezvous._check_rank(size, rank)


@pytest.mark.parametrize("size,rank", [(2, 0), (2, 1), (2, -1), (-1, 3), (0, 3), (None, 1), (2, None)])
def test_ranks_inside_or_undecided_pass(size, rank):
    rendezvous._check_rank(size, rank)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("10.0.0.1", False), ("localhost", False), ("", False)])
def test_only_loopback_ip_literals_count_as_loopback(host, loopback):
    assert rendezvous.is_loopback(host) is loopback


class ClosingStore:
    """The roll-call's store as rank 1 sees it when rank 0 gives up first: readable until the group fails."""

    def __init__(self, entries):
        self.entries, self.closed = entries, False

    def get(self, key):
        if self.closed:
            raise RuntimeError("Connection reset by peer")
        return self.entries[key]


def test_a_member_that_died_after_the_roll_call_is_named_even_once_rank_0_closed_the_store():
    import os
    import socket

    if getattr(rendezvous.c10d, "_set_pg_timeout", None) is None:
        pytest.skip("this torch cannot bound the group's making")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # reaped: that pid no longer runs
    here = socket.gethostname()
    store = ClosingStore({rendezvous.ARRIVED_KEY.format(rank=r): f"{here}:{pid}".encode()
                          for r, pid in enumerate([os.getpid(), os.getpid(), dead])})

    def real(**kwargs):  # gloo's wait for the dead member ends; rank 0 has closed its store by then
        store.closed = True
        raise RuntimeError("Timed out waiting for rank 2")

    with pytest.raises(rendezvous.PrivateWorldTimeout) as raised:
        rendezvous._form_group(real, {"world_size": 3, "rank": 1, "timeout": None}, roll_store=store, seconds=5,
                               where="127.0.0.1:1")
    assert (raised.value.arrived, raised.value.missing) == ([0, 1], [2])
    assert "ranks [2] are no longer running" in str(raised.value)
