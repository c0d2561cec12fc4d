"""The seed case, stock and with vllm-pg-shim, side by side, on a real vLLM engine (CPU build, tiny model).

A host spawns 2 ranks with torch.multiprocessing; each joins a gloo WORLD; rank 0 builds ``vllm.LLM`` and
generates; then both ranks run collectives on the host's WORLD and a new subgroup. Every run is bounded: a
stock run that hangs is stopped and its whole process tree killed. Run it with ``nox -s demo``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.harness import run_scenario  # noqa: E402
from support.tiny_model import ensure_tiny_model  # noqa: E402

RUNS = [
    # (label, activation, in_process, bound in seconds)
    ("stock, in-process engine", "stock", True, 75),
    ("shim,  in-process engine", "install", True, 180),
    ("stock, engine process", "stock", False, 180),
    ("shim,  engine process", "install", False, 180),
]


def verdict(out, clean_tokens) -> tuple[str, str, str, str]:
    r0, r1 = out.ranks.get(0, {}), out.ranks.get(1, {})
    if "engine_built_0" not in [s for s, _ in r0.get("stages", [])]:
        engine = f"hung building the engine (stopped after {out.elapsed:.0f} s)"
    else:
        engine = "same tokens as a clean process" if r0.get("tokens") == [clean_tokens] else "DIFFERENT tokens"
    collectives = (
        "exact" if all(r.get(k) for r in (r0, r1) for k in ("world_all_reduce_ok", "subgroup_all_reduce_ok"))
        else "never ran" if not (r0.get("stages") and r1.get("stages")) or "host_collectives_done" not in
        [s for s, _ in r1.get("stages", [])] else "WRONG"
    )
    if out.timed_out:
        done = all("done" in [s for s, _ in r.get("stages", [])] for r in (r0, r1))
        exit_ = "work done, but the rank never exits (stopped)" if done else "killed"
    else:
        exit_ = f"exit code {out.returncode} after {out.elapsed:.0f} s" + (
            f", left {len(out.leftovers)} processes" if out.leftovers else ", nothing left running")
    return engine, collectives, exit_, "PASS" if engine.startswith("same") and collectives == "exact" and \
        out.returncode == 0 and not out.leftovers else "FAIL"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["in-process", "engine-process"], help="run one engine mode only")
    args = parser.parse_args(argv)
    import vllm_pg_shim

    info = vllm_pg_shim.status()
    print(f"vllm-pg-shim {info['shim_version']} · vLLM {info['vllm']['version']} ({info['vllm']['distribution']}) "
          f"· torch {info['torch']} · family {info['family']}")
    model = ensure_tiny_model()
    work = Path(tempfile.mkdtemp(prefix="vllm-pg-shim-demo-"))
    print(f"tiny model: {model}\nlogs: {work}\n\nreference: a clean process (no WORLD) ...", flush=True)
    clean = run_scenario(work / "clean", model=model, activation="clean", in_process=True, world=1, timeout=180)
    if clean.returncode != 0:
        print(clean.describe())
        return 1
    clean_tokens = clean.ranks[0]["tokens"][0]
    print(f"  tokens: {clean_tokens}\n")
    rows = []
    for label, activation, in_process, bound in RUNS:
        if args.only and args.only != ("in-process" if in_process else "engine-process"):
            continue
        print(f"{label} (bounded at {bound} s) ...", flush=True)
        slug = label.replace(",", "").replace(" ", "-")
        out = run_scenario(work / slug, model=model, activation=activation, in_process=in_process,
                           timeout=bound)
        rows.append((label, *verdict(out, clean_tokens)))
    headers = ("run", "engine on rank 0", "host collectives", "exit", "")
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print("\n" + line.format(*headers) + "\n" + line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    shim_ok = all(r[-1] == "PASS" for r in rows if r[0].startswith("shim"))
    stock_failed = all(r[-1] == "FAIL" for r in rows if r[0].startswith("stock"))
    print(f"\n{'OK' if shim_ok and stock_failed else 'UNEXPECTED'}: stock fails the seed case, the shim passes it.")
    return 0 if shim_ok and stock_failed else 1


if __name__ == "__main__":
    sys.exit(main())
