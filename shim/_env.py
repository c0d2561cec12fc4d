"""The shim's environment variables, parsed in one place. Imports nothing beyond the standard library."""
from __future__ import annotations

import os
import warnings

ACTIVATION_VAR = "VLLM_PG_SHIM"
TIMEOUT_VAR = "VLLM_PG_SHIM_TIMEOUT"
FORCE_VAR = "VLLM_PG_SHIM_FORCE"
FORCE_TORCH_VAR = "VLLM_PG_SHIM_FORCE_TORCH"
ALL_VARS = (ACTIVATION_VAR, TIMEOUT_VAR, FORCE_VAR, FORCE_TORCH_VAR)

_ACTIVE_VALUES = ("1",)
_INACTIVE_VALUES = ("", "0", "off")
_warned: set[str] = set()


def _warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def _switch(variable: str, consequence: str, environ) -> bool:
    """A yes/no variable: '1' is on; unset, '0', 'off' or empty are off; anything else warns once and is off."""
    raw = environ.get(variable)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _ACTIVE_VALUES:
        return True
    if value not in _INACTIVE_VALUES:
        _warn_once(
            f"{variable}:{raw}",
            f"{variable}={raw!r} is not understood; accepted values: '1' (active), '0', 'off' or empty "
            f"(inactive). {consequence}",
            stacklevel=4,  # the caller of activation_requested() or torch_forced()
        )
    return False


def activation_requested(environ=os.environ) -> bool:
    """True when ``VLLM_PG_SHIM`` asks for activation."""
    return _switch(ACTIVATION_VAR, "vllm-pg-shim stays inactive.", environ)


def torch_forced(environ=os.environ) -> bool:
    """True when ``VLLM_PG_SHIM_FORCE_TORCH`` asks to apply the shim to a torch whose internals differ."""
    return _switch(FORCE_TORCH_VAR, "A torch whose internals differ stays refused.", environ)


# torch keeps store timeouts in milliseconds and some of its paths overflow beyond a C int of them: a longer
# bound is no bound anyway.
MAX_TIMEOUT = (2**31 - 1) // 1000  # 2147483 s, about 24.8 days


def rendezvous_timeout(environ=os.environ) -> float | None:
    """Seconds from ``VLLM_PG_SHIM_TIMEOUT``; None when unset. A bad value warns once and is ignored."""
    raw = environ.get(TIMEOUT_VAR)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_TIMEOUT:  # also false for nan
        _warn_once(
            f"timeout:{raw}",
            f"{TIMEOUT_VAR}={raw!r} is not accepted: it must be a number of seconds greater than 0 and at most "
            f"{MAX_TIMEOUT} (about 24 days). It is ignored (the private world's rendezvous uses vLLM's own "
            f"timeout).",
        )
        return None
    return value


def forced_family(environ=os.environ) -> str | None:
    raw = environ.get(FORCE_VAR, "").strip()
    return raw or None
