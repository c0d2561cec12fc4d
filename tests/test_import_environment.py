"""install() writes what ``import vllm`` of the installed release writes into the environment (NCCL_CUMEM_ENABLE
in 0.7.0-0.10.1), so host ranks that never import vLLM agree with those that do. Fresh interpreters, the fake
vLLM package relabelled with each release number (the values come from compat_matrix.yaml)."""
from __future__ import annotations

import pytest

from test_lifecycle import _fake_with_version, run_probe

PROBE = """
import json, os
import vllm_pg_shim
before = os.environ.get("NCCL_CUMEM_ENABLE")
status = vllm_pg_shim.install()
installed = os.environ.get("NCCL_CUMEM_ENABLE")
if IMPORT_VLLM:
    import vllm
vllm_pg_shim.uninstall()
print("RESULT " + json.dumps({"before": before, "installed": installed, "written": status["import_environment"],
                               "after_uninstall": os.environ.get("NCCL_CUMEM_ENABLE")}))
"""


def probe(tmp_path, version, user_value=None, import_vllm=False):
    env = {"NCCL_CUMEM_ENABLE": user_value} if user_value is not None else {}
    r = run_probe(PROBE.replace("IMPORT_VLLM", str(import_vllm)), env_extra=env,
                   pythonpath=_fake_with_version(tmp_path, version), tmp_path=tmp_path)
    assert r["result"] is not None, r["log"]
    return r["result"]


@pytest.fixture(autouse=True)
def _no_inherited_value(monkeypatch):
    monkeypatch.delenv("NCCL_CUMEM_ENABLE", raising=False)


@pytest.mark.parametrize("version,user_value,expected", [
    ("0.7.0", None, "0"), ("0.8.4", "1", "0"),          # vLLM overrides any value
    ("0.9.1", None, "0"), ("0.10.1.1", "1", "1"),       # vLLM keeps a user's value
    ("0.6.6.post1", None, None), ("0.10.2", None, None), ("0.32.0", "1", "1"),   # vLLM writes nothing
])
def test_install_writes_what_import_vllm_writes(tmp_path, version, user_value, expected):
    r = probe(tmp_path, version, user_value)
    assert r["installed"] == expected, r
    kept_users_value = user_value is not None and expected == user_value
    assert bool(r["written"]) is (expected is not None and not kept_users_value), r
    assert r["after_uninstall"] == user_value, r   # vLLM never imported here: uninstall puts the old value back


def test_after_vllm_was_imported_uninstall_leaves_the_value_vllm_relies_on(tmp_path):
    r = probe(tmp_path, "0.8.0", import_vllm=True)
    assert (r["installed"], r["after_uninstall"]) == ("0", "0"), r
    assert r["written"] == [{"variable": "NCCL_CUMEM_ENABLE", "before": None, "after": "0"}], r
