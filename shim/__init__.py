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

from .exceptions import PrivateWorldTimeout, ShimError, UnsupportedTorch

__all__ = ["install", "uninstall", "status", "ShimError", "PrivateWorldTimeout", "UnsupportedTorch", "__version__"]


def install(*, family: str | None = None) -> dict:
    """Activate the shim in this process (idempotent). Works before or after ``import vllm``.

    ``family`` forces a patch family by name (as ``VLLM_PG_SHIM_FORCE`` does). Returns ``status()``.
    """
    from ._lifecycle import install as _install

    return _install(family=family, how="install()")


def uninstall() -> dict:
    """Restore every original vLLM and torch name the shim replaced. Returns ``status()``."""
    from ._lifecycle import uninstall as _uninstall

    return _uninstall()


def status() -> dict:
    """What is active and why: versions, the family chosen, activation, and this process's WORLD."""
    from ._lifecycle import status as _status

    return _status()
