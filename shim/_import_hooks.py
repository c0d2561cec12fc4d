"""Run a function right after a module is imported, or at once when it already is (PEP 369's post-import hooks).

wrapt's ``register_post_import_hook`` does the same, but importing wrapt costs more than the rest of
``install()``, which runs in every vLLM process; wrapt is imported only once there is a function to wrap. The
mechanism is wrapt's: a finder first on ``sys.meta_path`` that, for a watched name, finds the real spec and
chains its loader; the loader puts the real one back on the module before executing it, then runs the hooks.
"""
from __future__ import annotations

import sys
import threading
from importlib.util import find_spec
from types import ModuleType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Callable

    Hook = Callable[[ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[Hook]] = {}
_finder: _HookFinder | None = None


def register(hook: Hook, name: str) -> None:
    """Call ``hook(module)`` once module ``name`` is imported (now, if it already is)."""
    global _finder
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _pending.setdefault(name, []).append(hook)
            if _finder is None:
                _finder = _HookFinder()
                sys.meta_path.insert(0, _finder)
    if module is not None:
        hook(module)


def cancel(hook: Hook) -> None:
    """Forget ``hook`` wherever it still waits for an import."""
    with _lock:
        for name in list(_pending):
            _pending[name] = [h for h in _pending[name] if h is not hook]
            if not _pending[name]:
                del _pending[name]
        _leave_when_idle()


def _leave_when_idle() -> None:
    """Nothing waits for an import: the finder leaves ``sys.meta_path`` (the caller holds the lock)."""
    global _finder
    if not _pending and _finder is not None:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None


def pending() -> dict[str, int]:
    with _lock:
        return {name: len(hooks) for name, hooks in _pending.items()}


def _notify(module: ModuleType) -> None:
    with _lock:
        hooks = _pending.pop(module.__name__, ())
        _leave_when_idle()
    for hook in hooks:
        hook(module)


class _NotifyingLoader:
    """The module's own loader, which runs the hooks once the module has executed."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its real loader (inspect, linecache and importlib.reload use it)
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        self._loader.exec_module(module)
        _notify(module)


class _HookFinder:
    """First on ``sys.meta_path``: chains the loader of a watched module, finds nothing itself."""

    def __init__(self) -> None:
        self._in_progress: set[str] = set()

    def find_spec(self, fullname: str, path=None, target=None):
        with _lock:
            if fullname not in _pending or fullname in self._in_progress:
                return None
            self._in_progress.add(fullname)
        try:
            spec = find_spec(fullname)  # the finders after this one
        finally:
            with _lock:
                self._in_progress.discard(fullname)
        if spec is None:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module") and not isinstance(loader, _NotifyingLoader):
            spec.loader = _NotifyingLoader(loader)  # type: ignore[assignment]  # duck-typed: importlib.abc is costly
        return spec
