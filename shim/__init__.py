"""vllm-pg-shim: run vLLM inside a program that already owns ``torch.distributed``.

``install()`` patches the vLLM release found here (picked from ``compat_matrix.yaml`` without importing vLLM) so
that when vLLM initialises its distributed state in a process whose WORLD was made by someone else, vLLM gets a
private world of its own size, isolated from the host's groups. ``uninstall()`` restores every original;
``status()`` says what is active and why.

Importing this package is cheap on purpose (it runs from a ``.pth`` at interpreter start): torch, vLLM, wrapt
and PyYAML are imported only when the shim is installed or asked about.
"""
from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at interpreter start
if TYPE_CHECKING:
    from ._status import Status
    from .exceptions import PrivateWorldTimeout, ShimError, UnsupportedTorch

__all__ = ["install", "uninstall", "status", "Status", "ShimError", "PrivateWorldTimeout", "UnsupportedTorch",
           "__version__"]


_LAZY = {"Status": "_status", "ShimError": "exceptions", "PrivateWorldTimeout": "exceptions",
         "UnsupportedTorch": "exceptions"}


def __getattr__(name: str):
    """The exported classes, imported on first use: the .pth imports this package whenever VLLM_PG_SHIM is set,
    and then only ``_env`` and ``_startup`` besides."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(*, family: str | None = None) -> Status:
    """Activate the shim in this process (idempotent). Works before or after ``import vllm``.

    ``family`` forces a patch family by name (as ``VLLM_PG_SHIM_FORCE`` does). Returns ``status()``.
    """
    from ._lifecycle import install as _install

    return _install(family=family, how="install()")


def uninstall() -> Status:
    """Restore every original the shim replaced (where its replacement is still in place). Returns ``status()``."""
    from ._lifecycle import uninstall as _uninstall

    return _uninstall()


def status() -> Status:
    """What is active and why: versions, the family chosen, the torch guard's verdict, activation, every name the
    shim replaced, and this process's WORLD. A :class:`Status` (typed fields; also a JSON-ready dict)."""
    from ._lifecycle import status as _status

    return _status()
