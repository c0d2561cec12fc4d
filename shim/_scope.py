"""Which private world is current in this thread (and the tasks it starts); imports nothing of torch.

Its own module so that the router (``world``) and the rendezvous it routes to (``rendezvous``) both read it
without importing each other.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any
from collections.abc import Iterator

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("vllm_pg_shim_current_private_world", default=None)


def current() -> Any:
    """The private world current here (a ``world.PrivateWorld``), or None: the host's world is current."""
    return _current.get()


@contextlib.contextmanager
def scope(world: Any) -> Iterator[Any]:
    """Make ``world`` current in this thread (and the tasks it starts) for the duration."""
    token = _current.set(world)
    try:
        yield world
    finally:
        _current.reset(token)


def in_private_scope() -> bool:
    return _current.get() is not None
