"""The shim's environment variables, parsed in one place. Imports nothing beyond the standard library."""
from __future__ import annotations

import os
import warnings

ACTIVATION_VAR = "VLLM_PG_SHIM"
TIMEOUT_VAR = "VLLM_PG_SHIM_TIMEOUT"
FORCE_VAR = "VLLM_PG_SHIM_FORCE"
FORCE_TORCH_VAR = "VLLM_PG_SHIM_FORCE_TORCH"
LAUNCHER_WAIT_VAR = "VLLM_PG_SHIM_LAUNCHER_WAIT"
ALL_VARS = (ACTIVATION_VAR, TIMEOUT_VAR, FORCE_VAR, FORCE_TORCH_VAR, LAUNCHER_WAIT_VAR)

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


def _seconds(variable: str, environ, *, zero: bool, rule: str, otherwise: str) -> float | None:
    """Seconds from ``variable``, None when unset or empty; a value outside [0 or just above, MAX_TIMEOUT] warns
    once (``rule``: what is accepted; ``otherwise``: what happens instead) and gives None too."""
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0 <= value if zero else 0 < value) or not value <= MAX_TIMEOUT:  # also refuses nan
        _warn_once(f"{variable}:{raw}", f"{variable}={raw!r} is not accepted: it must be {rule}. {otherwise}",
                   stacklevel=4)
        return None
    return value


def rendezvous_timeout(environ=os.environ) -> float | None:
    """Seconds from ``VLLM_PG_SHIM_TIMEOUT``; None when unset. A bad value warns once and is ignored."""
    return _seconds(TIMEOUT_VAR, environ, zero=False,
                    rule=f"a number of seconds greater than 0 and at most {MAX_TIMEOUT} (about 24 days)",
                    otherwise="It is ignored (the private world's rendezvous uses vLLM's own timeout).")


# Long enough for ranks that build their engines at the same point of one program (TRL, verl) to arrive together
# on a loaded machine; short enough that an engine on only some ranks is not held up for long.
DEFAULT_LAUNCHER_WAIT = 20.0


def launcher_wait(environ=os.environ) -> float:
    """Seconds from ``VLLM_PG_SHIM_LAUNCHER_WAIT`` (0: never wait); the default when unset. A bad value warns once
    and the default applies."""
    value = _seconds(LAUNCHER_WAIT_VAR, environ, zero=True, rule=f"a number of seconds from 0 to {MAX_TIMEOUT}",
                     otherwise=f"The default, {DEFAULT_LAUNCHER_WAIT:g} s, applies.")
    return DEFAULT_LAUNCHER_WAIT if value is None else value


def forced_family(environ=os.environ) -> str | None:
    raw = environ.get(FORCE_VAR, "").strip()
    return raw or None
