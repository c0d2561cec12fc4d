"""One measurement of the benchmark (tools/bench.py), in a process of its own.

Run as a script: ``bench_worker.py CASE --out FILE.json [options]``; it writes what it measured into FILE.json.
Every case runs in a fresh interpreter, so no case pays for, or profits from, what an earlier one loaded.

- ``engine``: a clean process (no WORLD). ``--activation stock`` or ``install`` (``vllm_pg_shim.install()`` first
  thing). Times ``import vllm``, ``LLM(...)`` and the generation of a fixed batch of prompts.
- ``seed``: the seed case. A host WORLD of 2 gloo ranks (torch.multiprocessing), the shim installed in each;
  rank 0 builds the engine (timed as in ``engine``) and generates, then both ranks run collectives on the host's
  WORLD. ``--activation stock``: the same processes without the shim, rank 0 building before it joins the WORLD.
- ``world``: vLLM's own ``init_distributed_environment`` + ``ensure_model_parallel_initialized`` for a world of
  ``--size`` ranks, cycle after cycle, alternating: with the shim installed inside a host WORLD (a private world)
  and with the shim uninstalled in the same processes while no WORLD exists (vLLM alone, as in a clean
  process). The shim's own steps (making and releasing the private world) are timed separately.
- ``timeout``: a host WORLD of 1; vLLM asks for a world of 2 whose second member never comes, with
  ``VLLM_PG_SHIM_TIMEOUT`` set to each of ``--timeouts``: the time to the ``PrivateWorldTimeout``.
- ``install``: ``vllm_pg_shim.install()`` timed, ``--after none`` (before vLLM is imported), ``vllm``
  (after ``import vllm``) or ``engine`` (after vLLM's distributed code and the modules that copy its functions).
- ``import``: ``import vllm_pg_shim`` timed, and the modules it brought in.
- ``startup``: ``site.main()`` (what the interpreter runs at start, every ``.pth`` included) timed, with the
  shim's ``.pth`` or (``--skip-pth``) without it; the caller runs this with ``python -S``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the tests' scenarios, as package "support"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The throughput batch: 16 prompts of 16 token ids each, 32 tokens generated for every prompt.
BATCH_PROMPTS = [[(7 * p + 13 * i) % 500 + 3 for i in range(16)] for p in range(16)]
BATCH_MAX_TOKENS = 32
# Rounds: at least MIN_ROUNDS, more while ROUNDS_SECONDS last (up to MAX_ROUNDS): on a loaded machine the best
# round needs many tries to find the machine quiet.
MIN_ROUNDS, MAX_ROUNDS, ROUNDS_SECONDS = 10, 40, 10.0


def _save(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data))


def _engine_timings(model: str, clock: _Clock | None = None) -> dict:
    """``import vllm``, ``LLM(...)`` and generation, each timed in wall-clock and in this process's CPU time (all
    its threads: the in-process engine's work is all here, and CPU time is what other load on a shared machine
    disturbs least). The engine is handed back (``llm``) so the caller decides how long it lives.

    Throughput: the batch is generated in rounds after a warm-up; each round's tokens/s is kept and the
    process's figure is its best round, the one the machine's other load disturbed least."""
    from support.seed_scenario import build_llm, generate

    t0 = time.perf_counter()
    import vllm  # noqa: F401

    profile = os.environ.get("VLLM_PG_SHIM_BENCH_PROFILE")  # a file for cProfile's stats of LLM() (by hand)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if clock is not None:
        clock.take()
    t1, c1 = time.perf_counter(), time.process_time()
    llm = build_llm(model)
    t2, c2 = time.perf_counter(), time.process_time()
    shim_own = clock.take() if clock is not None else None
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    generate(llm, BATCH_PROMPTS, BATCH_MAX_TOKENS)  # warm-up: the first steps pay one-time costs
    rounds, cpu_rounds = [], []
    deadline = time.perf_counter() + ROUNDS_SECONDS
    while len(rounds) < MIN_ROUNDS or (len(rounds) < MAX_ROUNDS and time.perf_counter() < deadline):
        start, cpu = time.perf_counter(), time.process_time()
        tokens = sum(map(len, generate(llm, BATCH_PROMPTS, BATCH_MAX_TOKENS)))
        rounds.append(tokens / (time.perf_counter() - start))
        cpu_rounds.append(tokens / (time.process_time() - cpu))
    shim_calls = _shim_calls_in(lambda: generate(llm, BATCH_PROMPTS, BATCH_MAX_TOKENS))
    return {"llm": llm, "import_vllm_s": t1 - t0, "build_s": t2 - t1, "build_cpu_s": c2 - c1,
            "build_shim_own_s": shim_own, "shim_calls_per_round": shim_calls,
            "tokens_per_s_rounds": rounds, "tokens_per_s": max(rounds), "tokens_per_cpu_s": max(cpu_rounds),
            "tokens_per_round": len(BATCH_PROMPTS) * BATCH_MAX_TOKENS}


def _shim_calls_in(fn) -> int | None:
    """Calls into the shim's own code while ``fn`` runs (one more, untimed round), counted with a profile hook on
    this thread, where the in-process engine steps; None where the shim is not imported. Zero means generation
    never enters the shim: whatever the throughput ratios show beside 1.0 is the machine's noise."""
    shim = sys.modules.get("vllm_pg_shim")
    if shim is None:
        return None
    package = str(Path(shim.__file__).parent)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(package):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def case_engine(args) -> None:
    result = {"activation": args.activation}
    clock = _install_with_clock() if args.activation == "install" else None
    timings = _engine_timings(args.model, clock)
    timings.pop("llm")
    result.update(timings)
    if args.activation == "install":
        import vllm_pg_shim

        result["private_worlds"] = len(vllm_pg_shim.status()["world"]["private_worlds"])
    _save(args.out, result)


def _seed_rank(rank: int, args, port: int) -> None:
    """``--activation install``: the seed case. ``stock``: the same processes without the shim and without a host
    WORLD (stock vLLM in a foreign one hangs); they meet over a plain store instead: what the seed case's layout
    costs on its own."""
    shim = args.activation == "install"
    clock = _install_with_clock() if shim else None
    from datetime import timedelta

    import torch.distributed as dist

    from support.seed_scenario import host_collectives

    if shim:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    else:
        store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timedelta(minutes=10))
    result = {"activation": args.activation}
    llm = None
    if rank == 0:
        timings = _engine_timings(args.model, clock)
        llm = timings.pop("llm")
        result.update(timings)
    if shim:
        import vllm_pg_shim

        result["private_worlds"] = [(w["size"], w["rank"]) for w in vllm_pg_shim.status()["world"]["private_worlds"]]
        checks = host_collectives(rank, 2)
        result["host_collectives_ok"] = all(checks[k] for k in ("world_all_reduce_ok", "subgroup_all_reduce_ok",
                                                                "broadcast_ok"))
    if rank == 0:
        _save(args.out, result)
    del llm
    if shim:
        dist.destroy_process_group()
    else:
        _store_barrier(store, "done", 2)


def case_seed(args) -> None:
    import torch.multiprocessing as mp

    from support.ports import free_ports

    mp.spawn(_seed_rank, args=(args, free_ports(1)[0]), nprocs=2, join=True)


class _Clock:
    """Seconds spent in some of the shim's functions, summed (wrappers put on the module attributes the shim
    itself calls through)."""

    def __init__(self, targets: dict) -> None:
        self.total = 0.0
        for module, names in targets.items():
            for name in names:
                setattr(module, name, self._timed(getattr(module, name)))

    def _timed(self, fn):
        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.total += time.perf_counter() - start

        return timed

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value


def _install_with_clock() -> _Clock:
    """``vllm_pg_shim.install()``, with the shim's own steps clocked: patching vLLM's modules as they are imported,
    making and releasing private worlds (the router with them), reading vLLM's call."""
    import vllm_pg_shim
    from vllm_pg_shim import _lifecycle, roles, world

    clock = _Clock({_lifecycle: ["_on_import"], world: ["new_private_world", "release", "discard"],
                    roles: ["bound_arguments"]})
    vllm_pg_shim.install()
    return clock


def _store_barrier(store, key: str, size: int) -> None:
    if store.add(key, 1) == size:
        store.set(key + "/go", "1")
    store.wait([key + "/go"])


def _world_rank(rank: int, args, ports: list[int]) -> None:
    """Cycle ``c`` uses ports[2 + 3c ...]: the host's WORLD, vLLM's world in the host, vLLM's world alone."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed import TCPStore

    import vllm_pg_shim
    from support.pg_scenario import call_with_supported, import_parallel_state, vllm_config_context
    from vllm_pg_shim import world

    host_size = max(2, args.size)
    member = rank < args.size
    # a plain key-value store (not a process group) lines the ranks up before each timed step
    store = TCPStore("127.0.0.1", ports[0], host_size, rank == 0, timedelta(seconds=120))
    ps = import_parallel_state()
    shim_clock = _install_with_clock()

    def vllm_setup(port: int) -> dict:
        """vLLM's set-up (timed, and the shim's own part of it), then vLLM's teardown (timed)."""
        with vllm_config_context():
            shim_clock.take()
            start = time.perf_counter()
            call_with_supported(ps.init_distributed_environment, (), dict(
                world_size=args.size, rank=rank, distributed_init_method=f"tcp://127.0.0.1:{port}",
                local_rank=rank, backend="gloo"))
            call_with_supported(ps.ensure_model_parallel_initialized, (args.size, 1), dict(backend="gloo"))
            setup = time.perf_counter() - start
            setup_own = shim_clock.take()
            start = time.perf_counter()
            ps.destroy_model_parallel()
            ps.destroy_distributed_environment()
            teardown = time.perf_counter() - start
        return {"setup_s": setup, "setup_shim_own_s": setup_own, "teardown_s": teardown,
                "teardown_shim_own_s": shim_clock.take()}

    cycles = []
    for cycle in range(args.cycles + 1):  # cycle 0 warms up (vLLM's lazy imports) and is not reported
        host_port, private_port, alone_port = ports[2 + 3 * cycle: 5 + 3 * cycle]
        entry = {}
        for phase in (("shim", "alone") if cycle % 2 == 0 else ("alone", "shim")):
            if phase == "shim":
                vllm_pg_shim.install()
                dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{host_port}", world_size=host_size,
                                        rank=rank)
                _store_barrier(store, f"{cycle}/shim", host_size)
                if member:
                    entry["shim"] = vllm_setup(private_port)
                    entry["router_after"] = world.router_installed()
                dist.barrier()
                dist.destroy_process_group()
            else:
                vllm_pg_shim.uninstall()
                _store_barrier(store, f"{cycle}/alone", host_size)
                if member:
                    entry["alone"] = vllm_setup(alone_port)
        _store_barrier(store, f"{cycle}/end", host_size)
        if cycle:
            cycles.append(entry)
    if rank == 0:
        _save(args.out, {"size": args.size, "host_size": host_size, "cycles": cycles})
    _store_barrier(store, "exit", host_size)


def case_world(args) -> None:
    import torch.multiprocessing as mp

    from support.ports import free_ports

    mp.spawn(_world_rank, args=(args, free_ports(2 + 3 * (args.cycles + 1))), nprocs=max(2, args.size), join=True)


def case_timeout(args) -> None:
    import torch.distributed as dist

    import vllm_pg_shim
    from support.pg_scenario import call_with_supported, import_parallel_state, vllm_config_context
    from support.ports import free_ports
    from vllm_pg_shim import world
    from vllm_pg_shim.rendezvous import PrivateWorldTimeout

    ports = free_ports(1 + len(args.timeouts))
    ps = import_parallel_state()
    vllm_pg_shim.install()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", world_size=1, rank=0)
    attempts = []
    for bound, port in zip(args.timeouts, ports[1:]):
        os.environ["VLLM_PG_SHIM_TIMEOUT"] = f"{bound:g}"
        error = None
        config = vllm_config_context()  # made before the clock starts: its first use imports vllm.config
        start = time.perf_counter()
        try:
            with config:
                call_with_supported(ps.init_distributed_environment, (), dict(
                    world_size=2, rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}", local_rank=0,
                    backend="gloo"))
        except PrivateWorldTimeout as exc:
            error = {"missing": exc.missing, "arrived": exc.arrived, "message": str(exc)}
        attempts.append({"timeout_s": bound, "elapsed_s": time.perf_counter() - start, "error": error,
                         "router_after": world.router_installed()})
    dist.destroy_process_group()
    _save(args.out, {"attempts": attempts})


def case_install(args) -> None:
    if args.after == "vllm":
        import vllm  # noqa: F401
    elif args.after == "engine":  # what install-late in the seed scenario loads first
        import vllm.distributed  # noqa: F401
        import vllm.v1.engine.core  # noqa: F401
        import vllm.v1.worker.cpu_worker  # noqa: F401
    import vllm_pg_shim

    start = time.perf_counter()
    status = vllm_pg_shim.install()
    elapsed = time.perf_counter() - start
    _save(args.out, {"after": args.after, "install_s": elapsed, "patched": len(status["patched"])})


def case_import(args) -> None:
    before = set(sys.modules)
    start = time.perf_counter()
    import vllm_pg_shim  # noqa: F401

    elapsed = time.perf_counter() - start
    _save(args.out, {"import_s": elapsed, "modules": sorted(set(sys.modules) - before)})


def case_startup(args) -> None:
    import site

    if args.skip_pth:
        real = site.addpackage

        def addpackage(sitedir, name, known_paths):
            return known_paths if name == "vllm_pg_shim.pth" else real(sitedir, name, known_paths)

        site.addpackage = addpackage
    start = time.perf_counter()
    site.main()
    elapsed = time.perf_counter() - start
    _save(args.out, {"site_s": elapsed, "skip_pth": args.skip_pth,
                     "shim_imported": "vllm_pg_shim" in sys.modules})


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=[n[5:] for n in globals() if n.startswith("case_")])
    p.add_argument("--out", required=True)
    p.add_argument("--model")
    p.add_argument("--activation", choices=["stock", "install"], default="stock")
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--timeouts", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 5.0])
    p.add_argument("--after", choices=["none", "vllm", "engine"], default="none")
    p.add_argument("--skip-pth", action="store_true")
    args = p.parse_args(argv)
    globals()[f"case_{args.case}"](args)


if __name__ == "__main__":
    main()
