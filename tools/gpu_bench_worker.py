"""bench_worker.py's ``engine`` and ``seed`` cases on a model of a real size: a Llama-3-8B-shaped config with
``load_format="dummy"`` (random weights of the true shapes, nothing downloaded) and a batch that keeps an H200
busy. Run by tools/gpu_bench.py, as bench.py runs bench_worker.py.

The changes are made at import, so the seed case's ranks (spawned: they import this file again as
``__mp_main__``) build the same engine as the clean processes.
"""
from __future__ import annotations

import bench_worker  # tools/, beside this file; it puts tests/ on sys.path (package "support")
from support import seed_scenario

# The share of the H200 (about 140 GiB) each engine takes: 16 GiB of bf16 weights, the rest mostly KV cache.
GPU_MEMORY_UTILIZATION = 0.3
MAX_MODEL_LEN = 256


def build_llm(model: str, args=None):
    from vllm import LLM

    return LLM(model, skip_tokenizer_init=True, enforce_eager=True, load_format="dummy",
               gpu_memory_utilization=GPU_MEMORY_UTILIZATION, max_model_len=MAX_MODEL_LEN)


seed_scenario.build_llm = build_llm
# 64 prompts of 32 token ids, 96 tokens generated for each: 6144 tokens a round
bench_worker.BATCH_PROMPTS = [[(7919 * p + 104729 * i) % 120000 + 1000 for i in range(32)] for p in range(64)]
bench_worker.BATCH_MAX_TOKENS = 96
bench_worker.MIN_ROUNDS, bench_worker.MAX_ROUNDS, bench_worker.ROUNDS_SECONDS = 3, 5, 3.0

if __name__ == "__main__":
    bench_worker.main()
