"""The exit finalizer waits, bounded, for the threads vLLM started (its client's output thread closes its ZMQ
socket there; a child whose interpreter finalises first blocks forever in the ZMQ context's garbage collection)."""
from __future__ import annotations

import threading
import time

from vllm_pg_shim import _exit


def vllm_thread(seconds: float) -> threading.Thread:
    def close_socket_soon():
        time.sleep(seconds)

    close_socket_soon.__module__ = "vllm.v1.engine.core_client"   # where vLLM's output thread's target lives
    thread = threading.Thread(target=close_socket_soon, daemon=True)
    thread.start()
    return thread


def test_vllms_threads_are_waited_for():
    thread = vllm_thread(0.3)
    assert _exit.join_vllm_threads(5.0) == [] and not thread.is_alive()


def test_the_wait_is_bounded_and_names_what_is_left():
    thread = vllm_thread(1.5)
    started = time.monotonic()
    left = _exit.join_vllm_threads(0.2)
    assert time.monotonic() - started < 1.0 and left == [thread.name]
    thread.join()


def test_other_threads_are_not_waited_for():
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    started = time.monotonic()
    assert _exit.join_vllm_threads(2.0) == [] and time.monotonic() - started < 0.5
    release.set()
