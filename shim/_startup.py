"""Activation at interpreter start (``VLLM_PG_SHIM=1``), run from the ``vllm_pg_shim.pth`` file.

The .pth line tests the variable before importing this module, so an unset variable costs one ``os.environ``
look-up. A .pth can run twice in one start (a venv's site-packages seen twice): the flag makes that harmless.
Nothing here may raise: a broken shim must never stop Python from starting. The .pth itself catches a failure to
import this module (a half-removed or half-upgraded install) and says so in one line, once.
"""
from __future__ import annotations

import sys

_started = False


def process_startup() -> None:
    global _started
    if _started:
        return
    _started = True
    try:
        from . import _env

        if not _env.activation_requested():
            return
        from ._lifecycle import install

        install(how="VLLM_PG_SHIM=1")
    except Exception as exc:  # never break interpreter start-up: one line on stderr, nothing else
        print(f"vllm-pg-shim: VLLM_PG_SHIM is set but the shim stays inactive: {_reason(exc)}", file=sys.stderr)


def vllm_plugin() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: runs in every vLLM process (engine core, workers)."""
    try:
        from . import _env
        from ._lifecycle import install, installed

        if _env.activation_requested() and not installed():
            install(how="vllm plugin (VLLM_PG_SHIM=1)")
    except Exception as exc:
        print(f"vllm-pg-shim: plugin could not activate the shim: {_reason(exc)}", file=sys.stderr)


def _reason(exc: Exception) -> str:
    """The error in one line, without repeating the ``vllm-pg-shim:`` prefix the shim's own errors carry."""
    from .exceptions import ShimError

    text = " ".join(str(exc).split())
    if not isinstance(exc, ShimError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[len("vllm-pg-shim: "):] if text.startswith("vllm-pg-shim: ") else text
