"""The cheap runtime parts install() uses in place of heavier libraries, against those libraries: distribution
versions (importlib.metadata) and post-import hooks (wrapt's), in this process."""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap

import pytest

from vllm_pg_shim import _import_hooks, _installed


@pytest.mark.parametrize("name", ["torch", "PyYAML", "pyyaml", "wrapt", "packaging", "pytest", "vllm-pg-shim",
                                  "vllm_pg_shim", "no-such-distribution"])
def test_versions_are_those_importlib_metadata_gives(name):
    try:
        expected = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        with pytest.raises(_installed.NotInstalled):
            _installed.version(name)
    else:
        assert _installed.version(name) == expected


def test_metadata_without_a_version_and_a_version_in_a_later_header(tmp_path, monkeypatch):
    (tmp_path / "nover-1.0.dist-info").mkdir()
    (tmp_path / "nover-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: nover\n\nVersion: 9\n")
    (tmp_path / "Some.Thing-2.0.dist-info").mkdir()
    (tmp_path / "Some.Thing-2.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: some.thing\nSummary: x\n  Version: not this\nversion:  2.0 \n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("nover", "some-thing", "Some_Thing"):
        assert _installed.version(name) == importlib.metadata.version(name)
    assert _installed.version("nover") is None and _installed.version("some-thing") == "2.0 "


def test_a_hook_runs_after_its_module_executes_and_at_once_for_a_loaded_one(tmp_path, monkeypatch):
    (tmp_path / "hooked_pkg").mkdir()
    (tmp_path / "hooked_pkg" / "__init__.py").write_text("")
    (tmp_path / "hooked_pkg" / "mod.py").write_text(textwrap.dedent("""
        VALUE = 1
        def function():
            return VALUE
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def hook(module):
        seen.append((module.__name__, module.VALUE, type(module.__loader__).__name__,
                     type(module.__spec__.loader).__name__))

    _import_hooks.register(hook, "hooked_pkg.mod")
    assert seen == [] and _import_hooks.pending().get("hooked_pkg.mod") == 1
    module = importlib.import_module("hooked_pkg.mod")
    assert seen == [("hooked_pkg.mod", 1, "SourceFileLoader", "SourceFileLoader")]  # the real loader stays
    assert "hooked_pkg.mod" not in _import_hooks.pending()
    _import_hooks.register(hook, "hooked_pkg.mod")  # already imported: now
    assert len(seen) == 2 and module.function() == 1
    for name in ("hooked_pkg.mod", "hooked_pkg"):
        sys.modules.pop(name, None)


def test_a_cancelled_hook_never_runs(tmp_path, monkeypatch):
    (tmp_path / "cancelled_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hook = seen.append
    finders = list(sys.meta_path)
    _import_hooks.register(hook, "cancelled_mod")
    assert len(sys.meta_path) == len(finders) + 1
    _import_hooks.cancel(hook)
    assert sys.meta_path == finders  # nothing waits: the finder has left
    importlib.import_module("cancelled_mod")
    assert seen == []
    sys.modules.pop("cancelled_mod", None)
