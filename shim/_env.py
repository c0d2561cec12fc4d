"""The shim's environment variables, parsed in one place. Imports nothing beyond the standard library."""
from __future__ import annotations

import os
import warnings

ACTIVATION_VAR = "VLLM_PG_SHIM"
TIMEOUT_VAR = "VLLM_PG_SHIM_TIMEOUT"
FORCE_VAR = "VLLM_PG_SHIM_FORCE"

_ACTIVE_VALUES = ("1",)
_INACTIVE_VALUES = ("", "0", "off")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def activation_requested(environ=os.environ) -> bool:
    """True when ``VLLM_PG_SHIM`` asks for activation; an unknown value warns once and counts as off."""
    raw = environ.get(ACTIVATION_VAR)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _ACTIVE_VALUES:
        return True
    if value not in _INACTIVE_VALUES:
        _warn_once(
            f"activation:{raw}",
            f"{ACTIVATION_VAR}={raw!r} is not understood; accepted values: '1' (active), '0', 'off' or empty "
            f"(inactive). vllm-pg-shim stays inactive.",
        )
    return False


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
