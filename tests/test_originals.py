"""The one registry of originals (vllm_pg_shim._originals): every replacement recorded, restored only where the
shim's object is still in place, and listed by status(); in this process, on the real torch."""
from __future__ import annotations

import multiprocessing
import types
from multiprocessing.process import BaseProcess

import pytest

from vllm_pg_shim import _exit, _originals

c10d = pytest.importorskip("torch.distributed.distributed_c10d")


def original():
    return "original"


class Owner:
    @staticmethod
    def method():
        return "original method"


def test_restore_puts_back_what_still_holds_the_shims_object_and_leaves_later_wrappers():
    module = types.ModuleType("owner_module")
    module.f, module.g = original, original
    raw_method = vars(Owner)["method"]
    _originals.replace(module, "f", lambda: "shim f", by="test")
    entry_g = _originals.replace(module, "g", lambda: "shim g", by="test")
    _originals.replace(Owner, "method", staticmethod(lambda: "shim method"), by="test")
    assert {e.name for e in _originals.saved("test")} == {"owner_module.f", "owner_module.g",
                                                          f"{__name__}.Owner.method"}
    assert _originals.get_original(module, "f") is original
    someone_else = lambda: "theirs"  # noqa: E731  (a library wrapping after the shim)
    module.g = someone_else
    left = _originals.restore("test")
    assert left == [entry_g] and module.g is someone_else
    assert module.f is original and vars(Owner)["method"] is raw_method
    assert _originals.saved("test") == [] and _originals.get_original(module, "f") is original


def test_get_original_of_a_name_never_replaced_is_its_value_and_an_unknown_name_raises():
    module = types.ModuleType("m")
    module.x = 1
    assert _originals.get_original(module, "x") == 1
    with pytest.raises(AttributeError):
        _originals.get_original(module, "absent")


def test_the_torch_router_is_recorded_listed_and_restored_with_the_class_swap():
    from vllm_pg_shim import _lifecycle, world

    torch_dist = pytest.importorskip("torch.distributed")
    before = {name: getattr(c10d, name) for name in ("init_process_group", "broadcast", "_update_default_pg")}
    world_class = type(c10d._world)
    private = world.new_private_world("test")
    try:
        listed = {(r["by"], r["name"]) for r in _lifecycle.status()["replacements"]}
        assert ("torch router", "torch.distributed.distributed_c10d.init_process_group") in listed
        assert ("torch router", "torch.distributed.init_process_group") in listed
        assert ("torch router", "torch.distributed.distributed_c10d._world.__class__") in listed
        assert type(c10d._world) is world.RoutingWorld and world.router_installed()
        assert _originals.get_original(c10d, "broadcast") is before["broadcast"]
        theirs = lambda *a, **k: None  # noqa: E731  (wrapped by someone else while the router is on)
        c10d.broadcast = theirs
    finally:
        world.release(private)
    try:
        assert not world.router_installed() and type(c10d._world) is world_class
        assert c10d.init_process_group is before["init_process_group"]
        assert torch_dist.init_process_group is before["init_process_group"]
        assert c10d._update_default_pg is before["_update_default_pg"]
        assert c10d.broadcast is theirs  # not the shim's to undo
        assert _originals.saved(_originals.TORCH_ROUTER) == []
    finally:
        c10d.broadcast = before["broadcast"]


def test_the_multiprocessing_patch_is_recorded_and_restored(monkeypatch):
    daemonic = types.SimpleNamespace(daemon=True)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: daemonic)
    start = vars(BaseProcess)["start"]
    _exit.explain_daemonic_children()
    try:
        assert [e.name for e in _originals.saved(_originals.MULTIPROCESSING)] == [
            "multiprocessing.process.BaseProcess.start"]
        with pytest.raises(AssertionError, match="daemonic processes are not allowed to have children.*"
                                                 "VLLM_ENABLE_V1_MULTIPROCESSING=0"):
            multiprocessing.Process(target=print).start()
    finally:
        _exit.stop()
    assert vars(BaseProcess)["start"] is start and _originals.saved(_originals.MULTIPROCESSING) == []
