"""Runs Python snippets and multi-process scenarios under a hard timeout and kills their whole process tree.

:func:`run_python` and :func:`run_snippet` are the one way tests run Python in a fresh interpreter (a snippet
reports its result on a ``RESULT <json>`` line); :func:`run_bounded` and :func:`run_scenario` run the
multi-process scenarios, whose output goes to a log file. Every run is in a new session
(``start_new_session``), so what it forks or spawns, vLLM's engine
processes included, can be found and killed even after the parent died. The ranks report progress in
``rank<N>.json`` files; on a timeout the report names the ranks that never reached a stage.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("seed_scenario.py")


@dataclass
class Outcome:
    returncode: int | None
    timed_out: bool
    elapsed: float
    log: str
    ranks: dict[int, dict] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

    def stages(self, rank: int) -> list[str]:
        return [s for s, _ in self.ranks.get(rank, {}).get("stages", [])]

    def ranks_without(self, stage: str, ranks) -> list[int]:
        return [r for r in ranks if stage not in self.stages(r)]

    def describe(self) -> str:
        lines = [f"returncode={self.returncode} timed_out={self.timed_out} elapsed={self.elapsed:.1f}s"]
        for rank in sorted(self.ranks):
            lines.append(f"  rank {rank}: {' > '.join(self.stages(rank))}")
        if self.leftovers:
            lines.append(f"  leftover processes (killed): {self.leftovers}")
        tail = log_tail(self.log) if STACK_DUMP_START in self.log else "\n".join(self.log.splitlines()[-25:])
        lines.append("  log tail:\n" + tail)
        return "\n".join(lines)


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(root_pid: int) -> list[str]:
    """SIGKILL the process, its descendants and anything left in its session; returns what was killed."""
    victims: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(root_pid)
        victims[root.pid] = root
        victims.update({p.pid: p for p in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    victims.update({p.pid: p for p in _session_members(root_pid)})
    killed = []
    for proc in victims.values():
        if not _alive(proc):
            continue  # already dead, or only not yet reaped by its parent
        try:
            killed.append(f"{proc.pid}:{' '.join(proc.cmdline())[:80]}")
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(list(victims.values()), timeout=10)
    return killed


# A run that outlives its bound prints, before it is killed, every Python thread's stack of each of its processes
# into its log (faulthandler, enabled in the run's environment, handles SIGABRT): the report says where it hung.
STACK_DUMP_START = "Fatal Python error: Aborted"
STACK_DUMP_WAIT = 2.0


def dump_stacks(sid: int) -> None:
    # one process at a time: they share the log, and dumps written together interleave line by line
    for proc in _session_members(sid):
        try:
            if _alive(proc):
                proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=STACK_DUMP_WAIT)
        except (psutil.Error, psutil.TimeoutExpired):
            continue


def log_tail(log: str, chars: int = 4000) -> str:
    """The end of a run's log: its last ``chars`` characters, or all from its first stack dump on (at most ten
    times as much) where a hung run printed them."""
    dumped = log.find(STACK_DUMP_START)
    return log[dumped:][-10 * chars:] if 0 <= dumped < len(log) - chars else log[-chars:]


# Seconds a run has to exit once its work is done: vLLM's and torch's processes end slowly on busy cores (20-60 s
# seen with 2 cores shared by several 4-rank runs); a process that never exits still fails.
EXIT_GRACE = 60.0


def run_bounded(cmd: list[str], *, timeout: float, env: dict | None = None, cwd: Path | None = None,
                log_path: Path, finished=None,
                exit_grace: float = EXIT_GRACE) -> tuple[int | None, bool, float, list[str]]:
    """Run ``cmd`` for at most ``timeout`` seconds; once ``finished()`` is true (the work is done), the
    process gets ``exit_grace`` seconds more to exit, else it counts as hung at exit."""
    start = time.monotonic()
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        deadline = start + timeout
        returncode, timed_out, work_done = None, False, False
        while returncode is None:
            try:
                returncode = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if finished is not None and not work_done and finished():
                    work_done, deadline = True, min(deadline, now + exit_grace)
                if now >= deadline:
                    timed_out = True
                    break
        if timed_out and not work_done:
            dump_stacks(proc.pid)
        if not timed_out:
            # multiprocessing's resource tracker ends a moment after its last user: give helpers that
            # moment, then whatever is still alive in the session is a leak, reported and killed.
            settle = time.monotonic() + 5
            while time.monotonic() < settle and any(_alive(p) for p in _session_members(proc.pid)):
                time.sleep(0.2)
        leftovers = kill_tree(proc.pid)
        if returncode is None:
            proc.wait()
    return returncode, timed_out, time.monotonic() - start, [] if timed_out else leftovers


def run_python(args: list[str], *, env: dict, timeout: float = 60, cwd: Path | None = None,
               python: str | Path = sys.executable) -> subprocess.CompletedProcess:
    """Run ``python *args`` in its own session, capturing stdout and stderr; on expiry the whole session is
    killed and the test fails naming what hung. Whatever the run left behind in its session is killed too."""
    proc = subprocess.Popen([str(python), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(
            f"{args!r} hung for {timeout}s:\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}") from None
    finally:
        kill_tree(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# Appended to every snippet: a host destroys its process group before it exits, as torch asks. Left alive,
# torch's exit can abort ("terminate called without an active exception"): one of the group's gloo threads needs
# the interpreter while it finalises. Seen with a host that had built two engines in turn, shim or no shim to blame.
# Destroying is not all: a gloo worker drops a finished collective's tensors a moment after the caller's wait
# returned, and with torch 2.13 that decrefs their Python objects, under the GIL. A worker still doing so when the
# interpreter finalises is ended by Python mid-C++ and aborts the process the same way (a core's backtrace:
# ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> TensorImpl::decref_pyobject -> take_gil ->
# PyThread_exit_thread). torch has no call that waits for that, and a group that something else still holds (vLLM's
# module globals, or a host whose WORLD vLLM destroyed) outlives the destroy: the pause gives its workers that moment.
HOST_EXIT = """
import sys as _sys
if "torch.distributed" in _sys.modules:
    if _sys.modules["torch.distributed"].is_initialized():
        _sys.modules["torch.distributed"].destroy_process_group()
    import time as _time
    _time.sleep(0.2)
"""


def run_snippet(script: Path, code: str, *, env: dict, timeout: float = 60, cwd: Path | None = None,
                flags: tuple = (), python: str | Path = sys.executable):
    """Write ``code`` to ``script`` and run it (see :func:`run_python`); returns (the completed process, its last
    ``RESULT`` line as a dict, or None)."""
    script.write_text(code + HOST_EXIT)
    out = run_python([*flags, str(script)], env=env, timeout=timeout, cwd=cwd, python=python)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    return out, (json.loads(lines[-1][7:]) if lines else None)


def scenario_env(activation: str, *, in_process: bool, extra: dict | None = None) -> dict:
    """A scenario's environment: the caller's without its vLLM and pytest variables, except those named in
    ``VLLM_PG_SHIM_TEST_KEEP_ENV`` (comma-separated: what a host needs, e.g. ``VLLM_USE_FLASHINFER_SAMPLER`` where
    a GPU kit leaves FlashInfer out)."""
    keep = set(os.environ.get("VLLM_PG_SHIM_TEST_KEEP_ENV", "").split(","))
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("VLLM_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    if activation == "env":
        env["VLLM_PG_SHIM"] = "1"
    env.update(extra or {})
    return env


def _read_ranks(out: Path) -> dict[int, dict]:
    ranks = {}
    for path in out.glob("rank*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:  # being replaced right now
            continue
        ranks[data["rank"]] = data
    return ranks


def all_ranks_done(out: Path, world: int):
    """A ``finished`` for :func:`run_bounded`: every one of ``world`` ranks wrote its ``done`` stage into ``out``."""

    def done() -> bool:
        ranks = _read_ranks(out)
        return len(ranks) == world and all("done" in [s for s, _ in r["stages"]] for r in ranks.values())

    return done


def run_ranks(cmd: list[str], out: Path, *, timeout: float, env: dict, finished, cwd: Path | None = None) -> Outcome:
    """A scenario whose ranks report into ``out`` (``rank<N>.json``), run by :func:`run_bounded` with its log in
    ``out/log.txt``; ``finished`` tells when the work is done (e.g. :func:`all_ranks_done`)."""
    returncode, timed_out, elapsed, leftovers = run_bounded(cmd, timeout=timeout, env=env, cwd=cwd,
                                                            log_path=out / "log.txt", finished=finished)
    return Outcome(returncode, timed_out, elapsed, (out / "log.txt").read_text(errors="replace"), _read_ranks(out),
                   leftovers)


def run_scenario(out: Path, *, model: Path, activation: str, in_process: bool, world: int = 2,
                 engine_ranks=(0,), cycles: int = 1, timeout: float = 240, extra_env: dict | None = None,
                 fork_engine: bool = False, python: str = sys.executable, backend: str = "gloo", tp: int = 1,
                 executor: str = "default", train_steps: int = 0) -> Outcome:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(SCENARIO), "--model", str(model), "--out", str(out), "--world", str(world),
           "--engine-ranks", ",".join(map(str, engine_ranks)), "--activation", activation, "--cycles", str(cycles)]
    cmd += ["--backend", backend, "--tp", str(tp), "--executor", executor, "--train-steps", str(train_steps)]
    if fork_engine:
        cmd.append("--fork-engine")
    env = scenario_env(activation, in_process=in_process, extra=extra_env)
    return run_ranks(cmd, out, timeout=timeout, env=env, finished=all_ranks_done(out, world), cwd=ROOT)
