"""Framework shapes on one CUDA device: host ranks that build vLLM engines sharing the GPU, push weights into them,
put them to sleep and delete them, with the host's collectives checked between every phase.

Run as a script (vLLM spawns, so this file is the ``__main__`` of every rank); ``tests/test_gpu_1x.py`` drives it
through ``run_gpu_scenario`` under the harness's hard timeout. Every rank runs the same phases in the same order
and meets the others on the host's WORLD (gloo) after each one, so a phase that breaks the host's WORLD shows at
the next meeting:

1. ``build``: the ranks in ``--engine-ranks`` build ``vllm.LLM`` one after another while the others wait in a host
   barrier (Lamorel's servers: the RL rank already waits while they come up), or all at once with
   ``--concurrent`` (TRL's colocate: every rank builds an ``external_launcher`` engine together);
2. ``generate``: greedy tokens of the seed scenario's prompts;
3. ``sleep``, per level in ``--sleep-levels`` (``enable_sleep_mode=True``): ``llm.sleep(level)``, the host's
   collectives while the engine sleeps, ``wake_up(tags=["weights"])``, after level 2 the weights loaded again from
   the checkpoint (level 2 drops them), ``wake_up(tags=["kv_cache"])``, generate: the tokens must be phase 2's;
4. ``push`` (``--push``): a new embedding pushed in process through the model's ``load_weights`` (TRL's colocate
   weight sync), generate: the tokens must change as a clean engine's do;
5. ``delete``: ``del llm; gc.collect(); torch.cuda.empty_cache()``: the host's WORLD and a new group must work and
   the GPU memory the engine held must be free again.

GPU memory is read with ``nvidia-smi`` (device-wide, MiB), never through torch in a rank before its engine exists:
CUDA initialised in a rank would change how vLLM starts its engine process (spawn instead of fork). Each rank's
output (vLLM's log included, and its engine process's) goes to ``rank<N>.log``, from which the engine's "Available
KV cache memory" line is read. ``--activation clean`` runs the same phases in one process with no WORLD (the
reference). Results: ``rank<N>.json`` (see seed_scenario.py).
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.ports import free_ports  # noqa: E402
from support.seed_scenario import _write, generate, host_collectives  # noqa: E402

KV_LINE = re.compile(r"Available KV cache memory: ([0-9.]+) GiB")
# TRL's colocate engines, the shape's own arguments (trl/trainer/grpo_trainer.py, vllm_mode == "colocate")
COLOCATE_ARGS = {"max_num_seqs": 8, "max_num_batched_tokens": 4096}


def gpu_used_mib() -> int:
    """Device-wide memory in use, as nvidia-smi reports it (no CUDA context in the caller)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return int(out.split()[0])


def kv_cache_gib(log: Path) -> list[float]:
    """Every "Available KV cache memory" figure vLLM logged into this rank's log, in order."""
    return [float(x) for x in KV_LINE.findall(log.read_text(errors="replace"))] if log.exists() else []


def build(args: argparse.Namespace, rank: int):
    from vllm import LLM

    extra = {}
    if args.executor != "default":
        extra["distributed_executor_backend"] = args.executor
    if args.executor == "external_launcher":
        extra.update(COLOCATE_ARGS, seed=rank)  # TRL: seed = process_index // tensor_parallel_size
    if args.sleep_levels:
        extra["enable_sleep_mode"] = True
    return LLM(args.model, skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=args.util,
               max_model_len=128, **extra)


def in_process_model(llm):
    """The model object of an in-process engine, reached as TRL's colocate weight sync reaches it."""
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model


def checkpoint_weights(model_dir: str) -> list:
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return list(weights.items())


def pushed_embedding(model_dir: str):
    """A new embedding (seeded, so every process pushes the same one) in the checkpoint's shape and dtype."""
    import torch

    embedding = dict(checkpoint_weights(model_dir))["model.embed_tokens.weight"]
    generator = torch.Generator().manual_seed(1)
    return [("model.embed_tokens.weight",
             torch.randn(embedding.shape, generator=generator).to(embedding.dtype) * 0.5)]


class Phases:
    """Runs the phases on one rank; ``meet`` is where every rank checks the host's WORLD (nothing without one)."""

    def __init__(self, args: argparse.Namespace, rank: int, world: int) -> None:
        self.args, self.rank, self.world = args, rank, world
        self.out = Path(args.out)
        self.engine = rank in args.engine_ranks
        self.meetings = 0

    def record(self, stage: str | None = None, **fields) -> None:
        _write(self.out, self.rank, **({"stage": stage} if stage else {}), **fields)

    def meet(self, phase: str) -> None:
        self.meetings += 1
        if self.world == 1:
            return
        result = host_collectives(self.rank, self.world)
        ok = result["world_all_reduce_ok"] and result["subgroup_all_reduce_ok"] and result["broadcast_ok"]
        self.record(f"met_after_{phase}", **{f"host_ok_after_{phase}": ok})

    def run(self) -> None:
        args = self.args
        llm = None
        self.record(gpu_mib_before_build=gpu_used_mib() if self.engine else None)
        self.meet("start")  # every reading above is taken before any engine exists
        builders = [[r] for r in args.engine_ranks] if not args.concurrent else [list(args.engine_ranks)]
        for turn in builders:
            if self.rank in turn:
                llm = build(args, self.rank)
                self.record("engine_built", gpu_mib_after_build=gpu_used_mib(),
                            num_gpu_blocks=llm.llm_engine.vllm_config.cache_config.num_gpu_blocks)
            self.meet(f"build_{'_'.join(map(str, turn))}")
        if llm is not None:
            self.record("generated", tokens=generate(llm))
        self.meet("generate")
        for level in args.sleep_levels:
            self.sleep_phase(llm, level)
        if args.push:
            if llm is not None:
                in_process_model(llm).load_weights(pushed_embedding(args.model))
                self.record("pushed", tokens_after_push=generate(llm))
            self.meet("push")
        if llm is not None:
            self.record(gpu_mib_before_delete=gpu_used_mib())
            del llm
            gc.collect()
            import torch

            torch.cuda.empty_cache()  # a no-op where this process never used CUDA (an engine process's client)
            self.record("deleted")
        self.meet("delete")
        if self.engine:  # once every engine is gone (the reading is device-wide)
            self.record(gpu_mib_after_delete=gpu_used_mib())
        self.record(kv_cache_gib=kv_cache_gib(self.out / f"rank{self.rank}.log"))

    def sleep_phase(self, llm, level: int) -> None:
        fields = {}
        if llm is not None:
            awake = gpu_used_mib()
            llm.sleep(level=level)
            fields = {"gpu_mib_awake": awake, "gpu_mib_asleep": gpu_used_mib()}
        self.record(f"asleep_{level}", **{f"sleep_{level}": fields})
        self.meet(f"sleep_{level}")
        if llm is not None:
            llm.wake_up(tags=["weights"])
            if level == 2:  # level 2 dropped the weights: the trainer's copy comes back (here, the checkpoint's)
                in_process_model(llm).load_weights(checkpoint_weights(self.args.model))
            llm.wake_up(tags=["kv_cache"])
            fields.update(gpu_mib_woken=gpu_used_mib(), tokens=generate(llm))
            self.record(f"woken_{level}", **{f"sleep_{level}": fields})
        self.meet(f"wake_{level}")


def rank_main(rank: int, args: argparse.Namespace) -> None:
    out = Path(args.out)
    log = os.open(out / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)  # vLLM's log and its engine process's (inherited) land in this rank's own file
    os.dup2(log, 2)
    _write(out, rank, stage="started", pid=os.getpid())
    if args.activation == "install":
        import vllm_pg_shim

        vllm_pg_shim.install()
    import torch.distributed as dist

    world = 1 if args.activation == "clean" else args.world
    if world > 1:
        # torchrun's environment, as TRL's and Lamorel's launchers leave it (vLLM's external launcher reads it), for
        # ranks that share one GPU: each is local rank 0 of a one-GPU node, so each engine takes cuda:0
        os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(world), LOCAL_WORLD_SIZE="1",
                          GROUP_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
        dist.init_process_group("gloo", init_method="env://")
        _write(out, rank, stage="host_world_ready")
    Phases(args, rank, world).run()
    if args.activation != "stock":
        import vllm_pg_shim

        _write(out, rank, shim_status=vllm_pg_shim.status())
    if world > 1:
        dist.destroy_process_group()
    _write(out, rank, stage="done")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--engine-ranks", type=lambda s: [int(x) for x in s.split(",") if x], default=[0])
    p.add_argument("--activation", choices=["stock", "install", "env", "clean"], default="stock")
    p.add_argument("--executor", choices=["default", "external_launcher"], default="default")
    p.add_argument("--concurrent", action="store_true", help="the engine ranks build at the same time")
    p.add_argument("--util", type=float, default=0.1, help="gpu_memory_utilization of each engine")
    p.add_argument("--sleep-levels", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    p.add_argument("--push", action="store_true", help="push a new embedding through load_weights")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.activation == "clean":
        args.engine_ranks = [0]
        rank_main(0, args)
        return
    args.port = args.port or free_ports(1)[0]
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=(args,), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
