"""A multiprocessing child that holds a vLLM engine exits when its work is done.

A child made by multiprocessing (torch.multiprocessing too) ends through ``multiprocessing.util._exit_function``:
it runs the finalizers registered with an exit priority, then joins every non-daemonic child, and never runs
``atexit``. vLLM shuts its engine process down from ``weakref.finalize`` callbacks, which run at GC or at
``atexit``: if the ``LLM`` is still referenced (or in a reference cycle) the child joins vLLM's engine process
forever. The shim registers one prioritised finalizer that runs vLLM's pending finalizers first.

A *daemonic* child (``torch.multiprocessing.spawn(..., daemon=True)``, a Pool worker) may not start processes at
all, so vLLM's engine process and workers cannot start there: multiprocessing's bare assertion then says so, and
the shim adds what to do instead.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import weakref

from . import _originals

_watched_pid: int | None = None
_active = False  # set while the shim is installed (the lifecycle calls watch / stop)

DAEMONIC_ADVICE = (
    "vllm-pg-shim: this process is a daemonic multiprocessing child (e.g. torch.multiprocessing.spawn(..., "
    "daemon=True) or a Pool worker), so vLLM cannot start its engine process or workers here. Build the LLM with "
    "VLLM_ENABLE_V1_MULTIPROCESSING=0 (an in-process engine), or start this process with daemon=False."
)


class _AfterFork:
    """An object for multiprocessing's after-fork registry (it keeps only weak references)."""


_after_fork_token = _AfterFork()
_after_fork_registered = False


def _is_vllm_callback(func) -> bool:
    module = getattr(func, "__module__", None) or type(func).__module__ or ""
    return module == "vllm" or module.startswith("vllm.")


def run_vllm_finalizers() -> int:
    """Run vLLM's pending ``weakref.finalize`` callbacks, newest first (as ``atexit`` would); returns how many."""
    if not _active:
        return 0
    pending = [
        (info.index, f)
        for f, info in list(getattr(weakref.finalize, "_registry", {}).items())
        if info.atexit and _is_vllm_callback(info.func)
    ]
    for _, finalizer in sorted(pending, key=lambda item: item[0], reverse=True):
        try:
            finalizer()
        except Exception:  # one engine's failed shutdown must not keep the child alive
            pass
    if pending:
        join_vllm_threads(VLLM_THREADS_JOIN_S)
    return len(pending)


# vLLM's client signals its output thread to close its ZMQ socket and returns at once. If the child's interpreter
# finalises first, that (daemonic) thread is frozen with its socket open, and the garbage collection of the ZMQ
# context (whose term() waits for every socket) blocks forever: seen with vLLM 0.32 under load, main thread
# "Garbage-collecting", a ZMQbg/IO thread alive. Those threads close within milliseconds once signalled.
VLLM_THREADS_JOIN_S = 5.0


def join_vllm_threads(timeout: float) -> list[str]:
    """Wait up to ``timeout`` seconds in all for the threads vLLM started here to end; returns those still alive."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    vllms = [t for t in threading.enumerate()
             if t is not current and _is_vllm_callback(getattr(t, "_target", None))]
    for thread in vllms:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in vllms if t.is_alive()]


def explain_daemonic_children() -> None:
    """In a daemonic child, make the error of a process start say why vLLM cannot start there and what to do.

    Only in a daemonic process, where every start fails anyway: the same exception type, the same leading text."""
    from multiprocessing.process import BaseProcess

    if not multiprocessing.current_process().daemon or _originals.is_replaced(BaseProcess, "start",
                                                                                 _originals.MULTIPROCESSING):
        return
    original = BaseProcess.start

    def start(self):
        if multiprocessing.current_process().daemon:
            raise AssertionError(f"daemonic processes are not allowed to have children ({DAEMONIC_ADVICE})")
        return original(self)

    start.__wrapped__ = original
    _originals.replace(BaseProcess, "start", start, by=_originals.MULTIPROCESSING)


def stop() -> None:
    """The shim is uninstalled: vLLM's finalizers are left to multiprocessing, process start is restored."""
    global _active
    _active = False
    _originals.restore(_originals.MULTIPROCESSING)


def _rewatch_after_fork(_token) -> None:
    if _active:  # a child forked while the shim is installed
        watch_multiprocessing_child_exit()


def watch_multiprocessing_child_exit() -> None:
    """In a multiprocessing child, run vLLM's finalizers before the child joins its own children.

    Called on install and whenever a target module is imported: a spawned child runs the .pth before
    multiprocessing has bootstrapped it (and the bootstrap clears the finalizer registry), so the check is
    repeated once vLLM is imported. A forked child re-registers through multiprocessing's after-fork hook,
    which runs right after that clear.
    """
    global _watched_pid, _after_fork_registered, _active
    _active = True
    if not _after_fork_registered:
        _after_fork_registered = True
        multiprocessing.util.register_after_fork(_after_fork_token, _rewatch_after_fork)
    if multiprocessing.parent_process() is None:
        return
    explain_daemonic_children()
    if _watched_pid == os.getpid():
        return
    _watched_pid = os.getpid()
    # exitpriority >= 0 runs in _exit_function's first pass, before it joins the non-daemonic children.
    multiprocessing.util.Finalize(None, run_vllm_finalizers, exitpriority=100)
