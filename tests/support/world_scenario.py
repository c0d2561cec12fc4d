"""Private worlds on real torch.distributed (gloo), without vLLM: the mechanism under the wrappers.

Run as a script: ``world_scenario.py CASE OUT_DIR``. It spawns a host WORLD of 2 ranks with
torch.multiprocessing; each rank runs ``CASE`` and writes ``rank<N>.json`` (a ``stages`` list and results).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.ports import free_ports  # noqa: E402
from support.seed_scenario import _write  # noqa: E402


def resolve(name: str):
    return torch._C._distributed_c10d._resolve_process_group(name)


def host_sum(value: float, group=None) -> float:
    t = torch.tensor([value])
    dist.all_reduce(t, group=group)
    return t.item()


def case_isolated_names(rank, ports, out):
    """A private world of 1 on each rank: names "0", "1" again, the host's registry entries untouched."""
    from vllm_pg_shim import world

    host_default = dist.group.WORLD
    host_sub = dist.new_group([0, 1])
    pw = world.new_private_world("test")
    with world.scope(pw):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[rank + 1]}", world_size=1, rank=0)
        private_sub = dist.new_group([0])
        private_names = sorted(c10d._world.pg_names.values())
        t = torch.tensor([5.0])
        dist.all_reduce(t)
        private_ok = t.item() == 5.0 and dist.get_world_size() == 1 and dist.get_rank() == 0
    result = {
        "private_names": private_names,
        "private_registry_names": sorted(pw.registered),
        "private_sub_name": private_sub.group_name,
        "private_ok": private_ok,
        "host_names_during": sorted(c10d._world.pg_names.values()),
        "host_default_resolves": resolve("0") is host_default,
        "host_sub_resolves": resolve(host_sub.group_name) is host_sub,
        "host_world_is_host": dist.group.WORLD is host_default and dist.get_world_size() == 2,
        "host_sum_during": host_sum(rank + 1.0),
        "host_new_group_name": dist.new_group([0, 1]).group_name,
    }
    with world.scope(pw):
        dist.destroy_process_group()
    world.release(pw)
    result.update(
        router_after=world.router_installed(),
        host_sum_after=host_sum(rank + 1.0, group=host_sub),
        host_default_resolves_after=resolve("0") is host_default,
        private_name_gone=_unresolvable(private_sub.group_name),
    )
    _write(out, rank, stage="done", **result)


def _unresolvable(name) -> bool:
    try:
        resolve(name)
    except Exception:
        return True
    return False


def case_shared_private_world(rank, ports, out):
    """Both host ranks are members of one private world of 2 (a TP=2 engine); collectives run on it in one
    thread while the host's run in another, and a broadcast with a global source rank works outside the scope."""
    from vllm_pg_shim import world

    original_broadcast_object_list = dist.broadcast_object_list
    pw = world.new_private_world("tp2")
    with world.scope(pw):
        # private ranks are the reverse of the host's, so a mix-up of the two shows in the sums
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", world_size=2, rank=1 - rank)
        private_group = dist.new_group([0, 1])
    errors = []

    def private_loop():
        try:
            with world.scope(pw):
                for i in range(200):
                    t = torch.tensor([float((1 - rank) + 1) * i])
                    dist.all_reduce(t)
                    assert t.item() == 3.0 * i, t
        except Exception as exc:  # reported, never swallowed
            errors.append(repr(exc))

    thread = threading.Thread(target=private_loop)
    thread.start()
    host_ok = all(host_sum(float(rank + 1) * i) == 3.0 * i for i in range(200))
    thread.join()
    b = torch.tensor([float(rank)])
    dist.broadcast(b, src=1, group=private_group)  # private global rank 1 == host rank 0
    # torch <= 2.4 takes the sender's rank from the default group (the host's here): routed to vLLM's world
    objects = [{"from_private_rank": 1 - rank}] if rank == 0 else [None]
    dist.broadcast_object_list(objects, src=1, group=private_group)
    result = {"host_ok": host_ok, "private_errors": errors, "broadcast_from_private_rank1": b.item(),
              "host_rank": dist.get_rank(), "private_rank_outside_scope": dist.get_rank(private_group),
              "object_from_private_rank1": objects[0],
              "object_collectives_routed": dist.broadcast_object_list is not original_broadcast_object_list}
    with world.scope(pw):
        dist.destroy_process_group()
    world.release(pw)
    result["host_sum_after"] = host_sum(rank + 1.0)
    result["object_collectives_restored"] = dist.broadcast_object_list is original_broadcast_object_list
    _write(out, rank, stage="done", **result)


def case_rendezvous_timeout(rank, ports, out):
    """Rank 0 makes a private world of 2 whose second member never comes: a clear error within the bound."""
    from vllm_pg_shim import world
    from vllm_pg_shim.rendezvous import PrivateWorldTimeout

    result = {}
    if rank == 0:
        pw = world.new_private_world("lonely")
        start = time.monotonic()
        try:
            with world.scope(pw):
                dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", world_size=2, rank=0)
            result["error"] = None
        except PrivateWorldTimeout as exc:
            result.update(error=str(exc), arrived=exc.arrived, missing=exc.missing)
        result["elapsed"] = time.monotonic() - start
        world.discard(pw)
        result["router_after"] = world.router_installed()
    result["host_sum_after"] = host_sum(rank + 1.0)
    _write(out, rank, stage="done", **result)


def case_host_teardown_spares_private(rank, ports, out):
    """The host destroys its WORLD while vLLM's private world lives: vLLM's names and groups survive."""
    from vllm_pg_shim import world

    pw = world.new_private_world("survivor")
    with world.scope(pw):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[rank + 1]}", world_size=1, rank=0)
        private_default = dist.group.WORLD
    host_sum(1.0)
    dist.destroy_process_group()  # the host's, from the host's side
    result = {"host_initialized_after": dist.is_initialized()}
    name = private_default.group_name
    result["private_name_still_registered"] = resolve(name) is private_default
    with world.scope(pw):
        t = torch.tensor([2.0])
        dist.all_reduce(t)
        result["private_still_works"] = t.item() == 2.0
        dist.destroy_process_group()
    world.release(pw)
    result["router_after"] = world.router_installed()
    _write(out, rank, stage="done", **result)


def case_private_teardown_frees_gloo_backends_last(rank, ports, out):
    """A private world torn down as the teardown role does, as on a torch before 2.8 (which frees a group holding
    the GIL): its groups' gloo backends outlive the groups, still usable, and end when the block ends."""
    import gc

    from vllm_pg_shim import world

    pw = world.new_private_world("teardown")
    with world.scope(pw):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[rank + 1]}", world_size=1, rank=0)
        dist.new_group([0])
        dist.all_reduce(torch.tensor([1.0]))
    held = []
    original = world._cpu_backends
    world._FREES_GROUPS_HOLDING_THE_GIL = True
    world._cpu_backends = lambda w: held.append(original(w)) or held[-1]
    with world.scope(pw), world.gloo_backends_freed_last(pw):
        dist.destroy_process_group()
        gc.collect()
        result = {"groups_after_destroy": len(pw.pg_map), "backends_held": len(held[0]),
                  "held_backends_usable": [backend.size() for backend in held[0]] == [1, 1]}
    result["backends_held_after_block"] = len(held[0])
    world.release(pw)
    result.update(router_after=world.router_installed(), host_sum_after=host_sum(rank + 1.0))
    _write(out, rank, stage="done", **result)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def rank_main(rank, case, host_port, ports, out):
    out = Path(out)
    _write(out, rank, stage="started", pid=os.getpid())
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{host_port}", world_size=2, rank=rank)
    CASES[case](rank, ports, out)
    if dist.is_initialized():  # a case may have destroyed the host's WORLD itself
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    case, out = sys.argv[1], sys.argv[2]
    Path(out).mkdir(parents=True, exist_ok=True)
    ports = free_ports(4)
    mp.spawn(rank_main, args=(case, ports[0], ports[1:], out), nprocs=2)
