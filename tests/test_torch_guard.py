"""The torch guard: the private torch internals the shim relies on, checked against a torch changed in-process
(attributes removed or reshaped with monkeypatch), through install(), status() and doctor."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest

torch_c10d = pytest.importorskip("torch.distributed.distributed_c10d")

import vllm_pg_shim  # noqa: E402
from vllm_pg_shim import torch_guard  # noqa: E402
from vllm_pg_shim.__main__ import main  # noqa: E402

FAKE = Path(__file__).with_name("fake_vllm")
C10D = "torch.distributed.distributed_c10d."


def copy_of_c10d(**changes) -> types.ModuleType:
    """A module with c10d's names, some replaced (a value) or removed (None)."""
    module = types.ModuleType("changed_c10d")
    vars(module).update(vars(torch_c10d))
    for name, value in changes.items():
        if value is None:
            delattr(module, name)
        else:
            setattr(module, name, value)
    return module


def test_the_torch_installed_here_has_every_internal_the_shim_relies_on():
    assert torch_guard.differences(torch_c10d) == []
    names = {i.name for i in torch_guard.INTERNALS}
    assert {"_World", "_world", "_World.default_pg", "_World.pg_map", "_register_process_group",
            "_unregister_process_group", "_unregister_all_process_groups", "_update_default_pg",
            "_get_default_store"} <= names


def test_a_missing_world_class_is_named_with_everything_that_depends_on_it():
    found = torch_guard.differences(copy_of_c10d(_World=None))
    assert found[0] == f"{C10D}_World: expected a class constructible without arguments, found absent"
    assert f"{C10D}_World.default_pg: expected a property with a setter, found absent" in found
    assert f"{C10D}_world: expected an instance of _World, found a _World object that is not an instance of _World" \
        in found  # the object torch's module still holds, of a class it no longer has


def test_world_maps_kept_per_instance_would_not_be_isolated_and_are_refused():
    class InstanceWorld(torch_c10d._World):
        def __init__(self):
            super().__init__()
            self._maps = {}

        @property
        def pg_map(self):  # no longer a module global: a private world would not get its own by the router
            return self._maps

    found = torch_guard.differences(copy_of_c10d(_World=InstanceWorld, _world=InstanceWorld()))
    assert found == [f"{C10D}_World.pg_map: expected a property over a dict global to distributed_c10d, "
                     f"found a property over storage of each _World instance"]


def test_a_read_only_default_group_and_a_changed_signature_are_named():
    class ReadOnly(torch_c10d._World):
        default_pg = property(torch_c10d._World.default_pg.fget)

    found = torch_guard.differences(copy_of_c10d(
        _World=ReadOnly, _world=ReadOnly(), _update_default_pg=lambda pg, extra: None))
    assert found == [f"{C10D}_World.default_pg: expected a property with a setter, found a read-only property",
                     f"{C10D}_update_default_pg: expected a function taking 1 positional argument, "
                     f"found a function whose parameters are ['pg', 'extra']"]


def test_optional_internals_may_be_absent_but_not_different():
    assert torch_guard.differences(copy_of_c10d(_set_pg_timeout=None, _unregister_all_process_groups=None,
                                                _register_process_group=None)) == []
    assert torch_guard.differences(copy_of_c10d(_register_process_group=3)) == [
        f"{C10D}_register_process_group: expected callable, found a int, not callable"]


def test_tested_versions_match_by_release():
    assert torch_guard.check(torch_c10d, "2.13.0+cpu", forced=False).tested
    assert not torch_guard.check(torch_c10d, "2.2.0", forced=False).tested


def test_tested_versions_are_the_torch_releases_of_the_recorded_runs():
    from support.record import load_records

    recorded = {torch_guard.release_of(str(r["torch"])) for r in load_records()}
    assert set(torch_guard.TESTED_TORCH) == recorded


# --- through install(), status() and doctor, in this process (the fake vLLM on sys.path) -----------------------


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    for var in [v for v in os.environ if v.startswith("VLLM_PG_SHIM")]:
        monkeypatch.delenv(var)
    yield
    vllm_pg_shim.uninstall()


def doctor_text() -> str:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["doctor"]) == 0
    return out.getvalue()


def test_install_refuses_a_changed_torch_and_says_what_differs(fake_vllm, monkeypatch):
    monkeypatch.delattr(torch_c10d, "_get_default_store")
    with pytest.raises(vllm_pg_shim.UnsupportedTorch) as refused:
        vllm_pg_shim.install()
    difference = f"{C10D}_get_default_store: expected a function taking 0 positional arguments, found absent"
    assert refused.value.differences == [difference]
    assert difference in str(refused.value) and "VLLM_PG_SHIM_FORCE_TORCH=1" in str(refused.value)
    status = vllm_pg_shim.status()
    assert not status["installed"] and status["patched"] == []
    assert status["torch_guard"]["differences"] == [difference] and not status["torch_guard"]["ok"]
    assert difference in status["reason"]
    assert f"torch guard    REFUSED: {difference}" in doctor_text()


def test_force_torch_applies_the_shim_anyway_with_a_warning(fake_vllm, monkeypatch):
    monkeypatch.delattr(torch_c10d, "_get_default_store")
    monkeypatch.setenv("VLLM_PG_SHIM_FORCE_TORCH", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = vllm_pg_shim.install()
    assert status["installed"] and status["torch_guard"]["forced"]
    assert any("VLLM_PG_SHIM_FORCE_TORCH=1" in str(w.message) and "_get_default_store" in str(w.message)
               for w in caught)
    assert "torch guard    FORCED (VLLM_PG_SHIM_FORCE_TORCH=1) despite" in doctor_text()


def test_install_on_the_torch_here_passes_the_guard(fake_vllm):
    status = vllm_pg_shim.install()
    assert status["installed"] and status["torch_guard"]["ok"] and status["torch_guard"]["tested"]
    assert "torch guard    ok" in doctor_text()


def test_a_changed_torch_imported_after_install_makes_the_shim_stand_down(tmp_path):
    """install() before torch is imported (as at interpreter start) checks torch right after its import."""
    code = textwrap.dedent("""
        import json, sys, warnings, wrapt
        warnings.simplefilter("always")
        def change(c10d):  # registered first, so it runs before the shim's check
            del c10d._get_default_store
        wrapt.register_post_import_hook(change, "torch.distributed.distributed_c10d")
        import vllm_pg_shim
        vllm_pg_shim.install()
        assert "torch" not in sys.modules
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch.distributed
        status = vllm_pg_shim.status()
        print("RESULT " + json.dumps({"installed": status["installed"], "reason": status["reason"],
                                      "warnings": [str(w.message) for w in caught]}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env["PYTHONPATH"] = str(FAKE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads([line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    assert not res["installed"] and "_get_default_store" in res["reason"]
    assert any("_get_default_store" in w and "stood down" in w for w in res["warnings"]), res
