"""The shim's cost with a model of a real size on one GPU (issue 14, item 3): a Llama-3-8B-shaped engine
(``load_format="dummy"``: random weights of the true shapes, no download), shim against stock in the same run.

For each repeat, in an order that rotates: stock ``LLM()`` in a clean process, the shim (``install()``) in a clean
process, and the seed case (the engine on rank 0 of a gloo host WORLD of 2, shim); each a fresh process timed by
tools/bench_worker.py's cases (import, ``LLM()``, the best round of a fixed batch after a warm-up), through
gpu_bench_worker.py. Writes ``results.json`` and ``README.md`` (the table, tokens/s stated) into ``--out``.
Usage on a GPU host with vLLM importable: ``python3 tools/gpu_bench.py [--repeats N]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import bench  # tools/, beside this file
from bench import fmt, item, log, machine, rotate, run_worker, source_commit
from gpu_bench_worker import GPU_MEMORY_UTILIZATION, MAX_MODEL_LEN

bench.WORKER = Path(__file__).with_name("gpu_bench_worker.py")
DEFAULT_OUT = bench.ROOT / "docs" / "benchmarks" / "gpu" / "llama3-8b"

# Meta-Llama-3-8B's config.json, its shapes only
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "hidden_act": "silu",
    "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
}
KINDS = {"stock": ("engine", "stock"), "shim": ("engine", "install"), "seed": ("seed", "install")}


def ensure_config(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(LLAMA3_8B, indent=1))
    return path


def measure(work: Path, model: str, repeats: int, partial: Path) -> dict[str, list[dict]]:
    runs = {kind: [] for kind in KINDS}
    for i in range(repeats):
        for kind in rotate(list(KINDS), i):
            case, activation = KINDS[kind]
            data = run_worker(work, f"{kind}{i}", case, "--model", model, "--activation", activation,
                              activation=activation, timeout=420)
            runs[kind].append(data)
            partial.write_text(json.dumps(runs, indent=1) + "\n")
            log(f"repeat {i} {kind}: LLM() {data['build_s']:.2f} s, {data['tokens_per_s']:.0f} tokens/s")
    return runs


def items(runs: dict[str, list[dict]]) -> list[dict]:
    stock, shim, seed = runs["stock"], runs["shim"], runs["seed"]

    def ratios(a, b, key):
        return [x[key] / y[key] for x, y in zip(a, b)]

    def values(rs, key):
        return [r[key] for r in rs]

    found = [
        ("1", item("throughput", "generation throughput, shim / stock (clean process)", "ratio",
                   ratios(shim, stock, "tokens_per_s"), (">=", 0.995))),
        ("1", item("seed_throughput", "generation throughput, seed case (shim, host WORLD of 2) / stock clean",
                   "ratio", ratios(seed, stock, "tokens_per_s"), None)),
        ("1", item("stock_tokens_per_s", "stock, clean process", "tokens/s", values(stock, "tokens_per_s"), None)),
        ("1", item("shim_tokens_per_s", "shim, clean process", "tokens/s", values(shim, "tokens_per_s"), None)),
        ("1", item("seed_tokens_per_s", "shim, seed case", "tokens/s", values(seed, "tokens_per_s"), None)),
        ("2", item("construction", "`LLM()` construction, shim / stock (clean process)", "ratio",
                   ratios(shim, stock, "build_s"), ("<=", 1.01))),
        ("2", item("seed_construction", "`LLM()` in the seed case (shim) / stock clean", "ratio",
                   ratios(seed, stock, "build_s"), ("<=", 1.02))),
        ("2", item("stock_build_s", "`LLM()`, stock, clean process", "s", values(stock, "build_s"), None)),
        ("2", item("shim_build_s", "`LLM()`, shim, clean process", "s", values(shim, "build_s"), None)),
        ("2", item("seed_build_s", "`LLM()`, shim, seed case", "s", values(seed, "build_s"), None)),
        ("2", item("seed_shim_own", "the shim's own steps inside `LLM()`, seed case", "ms",
                   [1000 * r["build_shim_own_s"] for r in seed], None)),
        ("3", item("throughput_shim_calls", "calls into the shim during one generation round (clean process)",
                   "calls", values(shim, "shim_calls_per_round"), ("<=", 0))),
        ("3", item("seed_throughput_shim_calls", "the same in the seed case", "calls",
                   values(seed, "shim_calls_per_round"), None)),
    ]
    for section, entry in found:
        entry["section"] = section
    return [entry for _, entry in found]


def table(results: dict) -> str:
    m = results["machine"]
    lines = ["# A Llama-3-8B-shaped engine on one GPU: the shim against stock", "",
             "Generated by `tools/gpu_bench.py` from `results.json`; do not edit by hand.", "",
             f"**Machine:** {bench.gpu_label(m) or 'no GPU'}, {m['cpu']}, {m['cores']} cores; {m['note']} "
             f"Python {m['python']}, {m['vllm']}, torch {m['torch']}, vllm-pg-shim {m['shim']}. "
             f"Run {results['date']} on commit {results.get('commit') or 'unknown'}, {results['repeats']} repeats "
             f"(order rotating), {results['minutes']:.0f} minutes.", "",
             f"**Engine:** {results['engine']}.", "", f"**Batch:** {results['batch']}.", "",
             *bench.rows(results), "",
             "Every figure comes from a fresh process; a ratio is taken within one repeat. Sections: 1 generation, "
             "2 `LLM()` construction, 3 calls into the shim while generating (0: generation never enters it). "
             "Stock vLLM cannot run the seed case (it hangs: ../../../runs/), so the seed case is compared with "
             "stock in a clean process."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="a machine lent for this run, nothing else running on it.")
    p.add_argument("--render", action="store_true", help="only rewrite README.md from results.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        (args.out / "README.md").write_text(table(json.loads((args.out / "results.json").read_text())))
        return 0
    work = Path(tempfile.mkdtemp(prefix="vllm-pg-shim-gpu-bench-"))
    model = str(ensure_config(work / "llama3-8b-shape"))
    started = time.monotonic()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "repeats": args.repeats, "machine": machine(args.note), "commit": source_commit(),
               "engine": f"vllm.LLM(Llama-3-8B shapes, bf16, load_format='dummy', skip_tokenizer_init, "
                         f"enforce_eager, gpu_memory_utilization={GPU_MEMORY_UTILIZATION}, "
                         f"max_model_len={MAX_MODEL_LEN}), engine core in the process",
               "batch": "64 prompts of 32 token ids, 96 tokens generated for each (greedy, ignore_eos): 6144 "
                        "tokens a round; per process the best of 3-5 rounds after a warm-up round"}
    log(f"{args.repeats} repeats; logs in {work}")
    results["raw"] = measure(work, model, args.repeats, args.out / "results.partial.json")
    results["items"] = items(results["raw"])
    results["minutes"] = (time.monotonic() - started) / 60
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.partial.json").unlink(missing_ok=True)
    (args.out / "README.md").write_text(table(results))
    for entry in results["items"]:
        log(f"{entry['key']}: median {fmt(entry['median'], entry['unit'])} {entry['unit']} "
            f"({fmt(entry['min'], entry['unit'])} - {fmt(entry['max'], entry['unit'])}, n={entry['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
