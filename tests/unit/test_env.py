"""Parsing of the shim's environment variables (vllm_pg_shim._env): values accepted, refused, warned about once."""
from __future__ import annotations

import warnings

import pytest

from vllm_pg_shim import _env


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_env, "_warned", set())


@pytest.mark.parametrize("value,active", [
    (None, False), ("1", True), (" 1 ", True), ("0", False), ("off", False), ("OFF", False), ("", False),
    ("  ", False),
])
def test_activation_values(value, active):
    environ = {} if value is None else {"VLLM_PG_SHIM": value}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.activation_requested(environ) is active


@pytest.mark.parametrize("value", ["yes", "true", "2", "on"])
def test_an_unknown_activation_value_warns_once_and_counts_as_off(value):
    with pytest.warns(RuntimeWarning, match="is not understood"):
        assert _env.activation_requested({"VLLM_PG_SHIM": value}) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.activation_requested({"VLLM_PG_SHIM": value}) is False


@pytest.mark.parametrize("value,seconds", [
    (None, None), ("", None), ("  ", None), ("5", 5.0), ("0.5", 0.5), (" 30 ", 30.0),
    (str(_env.MAX_TIMEOUT), float(_env.MAX_TIMEOUT)),
])
def test_timeout_values_accepted(value, seconds):
    environ = {} if value is None else {"VLLM_PG_SHIM_TIMEOUT": value}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.rendezvous_timeout(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "1e9", str(_env.MAX_TIMEOUT + 1)])
def test_timeout_values_refused_warn_once_and_are_ignored(value):
    with pytest.warns(RuntimeWarning, match="is not accepted"):
        assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) is None


@pytest.mark.parametrize("value,seconds", [
    (None, _env.DEFAULT_LAUNCHER_WAIT), ("", _env.DEFAULT_LAUNCHER_WAIT), ("0", 0.0), (" 2.5 ", 2.5),
])
def test_launcher_wait_values_accepted(value, seconds):
    environ = {} if value is None else {"VLLM_PG_SHIM_LAUNCHER_WAIT": value}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.launcher_wait(environ) == seconds


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "1e9"])
def test_launcher_wait_values_refused_warn_once_and_the_default_applies(value):
    with pytest.warns(RuntimeWarning, match="default, 20 s, applies"):
        assert _env.launcher_wait({"VLLM_PG_SHIM_LAUNCHER_WAIT": value}) == _env.DEFAULT_LAUNCHER_WAIT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.launcher_wait({"VLLM_PG_SHIM_LAUNCHER_WAIT": value}) == _env.DEFAULT_LAUNCHER_WAIT


def test_the_timeout_limit_is_what_fits_torchs_millisecond_int():
    assert _env.MAX_TIMEOUT * 1000 <= 2**31 - 1 < (_env.MAX_TIMEOUT + 1) * 1000


@pytest.mark.parametrize("value,family", [(None, None), ("", None), ("  ", None), (" v1 ", "v1")])
def test_forced_family(value, family):
    environ = {} if value is None else {"VLLM_PG_SHIM_FORCE": value}
    assert _env.forced_family(environ) == family
