"""Every name the shim replaced, with its original, in one registry (as gevent.monkey's ``saved``).

One restore rule for all of them (as OpenTelemetry's ``unwrap``): an original goes back only where the shim's
object is still in place. A wrapper another library put on top later stays, with the shim's underneath it (the
shim's replacements pass calls through once nothing of the shim is active), rather than being silently dropped.

The parts of the shim that replace names, by the ``by`` they record:

- ``vllm``: the family's targets in vLLM, and the copies of them bound elsewhere (``shim/_lifecycle.py``);
- ``torch router``: torch.distributed functions and the class of torch's ``_world``, while a private world
  lives (``shim/world.py``);
- ``multiprocessing``: ``BaseProcess.start`` in a daemonic child, to say why vLLM cannot start there
  (``shim/_exit.py``).
"""
from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, NamedTuple

VLLM = "vllm"
TORCH_ROUTER = "torch router"
MULTIPROCESSING = "multiprocessing"

_MISSING = object()


class Saved(NamedTuple):
    owner: Any  # a module, a class, or (for "__class__") an instance
    attr: str
    original: Any
    replacement: Any
    by: str
    owner_name: str | None = None  # for an owner that has no name of its own (an instance)

    @property
    def name(self) -> str:
        return f"{self.owner_name or qualified_name(self.owner)}.{self.attr}"

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "by": self.by}


_lock = threading.RLock()
_saved: list[Saved] = []


def qualified_name(owner: Any) -> str:
    if isinstance(owner, ModuleType):
        return owner.__name__
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return f"<{type(owner).__module__}.{type(owner).__qualname__} object at {id(owner):#x}>"


def current(owner: Any, attr: str) -> Any:
    """What ``owner.attr`` holds now; a class's own entry, not an inherited or descriptor-bound one."""
    if attr == "__class__":
        return type(owner)
    if isinstance(owner, type):
        return vars(owner).get(attr, _MISSING)
    return getattr(owner, attr, _MISSING)


def replace(owner: Any, attr: str, replacement: Any, *, by: str, original: Any = _MISSING,
            owner_name: str | None = None) -> Saved:
    """Set ``owner.attr`` to ``replacement`` and remember what it held (``original`` when the caller already
    read it)."""
    with _lock:
        entry = Saved(owner, attr, current(owner, attr) if original is _MISSING else original, replacement, by,
                      owner_name)
        setattr(owner, attr, replacement)
        _saved.append(entry)
        return entry


def restore(by: str) -> list[Saved]:
    """Put back, newest first, every original ``by`` replaced; returns the entries left alone because something
    else has replaced the shim's object since. The registry forgets all of ``by``'s entries either way."""
    with _lock:
        left = []
        for entry in reversed([e for e in _saved if e.by == by]):
            if current(entry.owner, entry.attr) is entry.replacement:
                setattr(entry.owner, entry.attr, entry.original)
            else:
                left.append(entry)
        _saved[:] = [e for e in _saved if e.by != by]
        return left


def get_original(owner: Any, attr: str) -> Any:
    """The value ``owner.attr`` had before the shim first replaced it; its current value when never replaced."""
    with _lock:
        for entry in _saved:
            if entry.owner is owner and entry.attr == attr:
                return entry.original
    value = current(owner, attr)
    if value is _MISSING:
        raise AttributeError(f"{qualified_name(owner)} has no attribute {attr!r}")
    return value


def is_replaced(owner: Any, attr: str, by: str) -> bool:
    with _lock:
        return any(e.owner is owner and e.attr == attr and e.by == by for e in _saved)


def saved(by: str | None = None) -> list[Saved]:
    """The live replacements, oldest first (all of them, or ``by``'s)."""
    with _lock:
        return [e for e in _saved if by is None or e.by == by]
