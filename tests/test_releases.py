"""Release matching (vllm_pg_shim.releases) gives packaging's answers, and install() reads only the matrix's
runtime sections: from the wheel's JSON when it matches the YAML, never run records, never PyYAML or
packaging.specifiers in a vLLM process."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from vllm_pg_shim import families, releases
from vllm_pg_shim.exceptions import ShimError

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_vllm")
MATRIX = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())

SPECIFIERS = sorted({str(f["releases"]) for f in MATRIX["families"].values()}
                    | {str(e["releases"]) for e in MATRIX["import_environment"]}
                    | {">0.5.0", ">0.5.0.post1", "<=0.5", "!=0.6.1", "==0.5", ">=0.5,!=0.5.3.post1", "<0.34.0"})
VERSIONS = sorted({v for tier in MATRIX["tiers"].values() for v in tier.get("versions", [])}
                  | {"".join(p) for p in itertools.product(["0.4.3", "0.5", "0.5.0", "0.5.3", "0.6.4", "0.34", "1.0.0"],
                                                           ["", ".post1", "rc1", ".dev3", "+cpu", ".post2+g1.cu128"])})


@pytest.mark.parametrize("specifiers", SPECIFIERS)
def test_simple_ranges_are_decided_as_packaging_decides_them(specifiers):
    assert releases._clauses(specifiers) is not None  # evaluated without packaging
    spec = SpecifierSet(specifiers)
    for version in VERSIONS:
        expected = spec.contains(releases.release_key(version), prereleases=False)
        assert releases.covers(specifiers, version) is expected, (specifiers, version)


def test_other_forms_go_to_packaging_with_the_same_meaning():
    assert releases._clauses("~=0.6.1") is None and releases.covers("~=0.6.1", "0.6.3")
    assert not releases.covers("==0.5.*", "0.6.0") and releases.covers("==0.5.*", "0.5.3.post1")
    assert releases.release_key("0.5.3-1") == "0.5.3.post1"  # not normalised: packaging parses it
    with pytest.raises(ValueError, match="is not a PEP 440 version specifier"):
        releases.check_specifiers(">>0.11")
    with pytest.raises(ShimError, match="is not a PEP 440 version"):
        releases.release_key("not a version")


def test_the_runtime_form_holds_only_what_install_reads():
    data = json.loads(families.runtime_form((ROOT / "compat_matrix.yaml").read_bytes()))
    assert set(data) == {"source", "families", "import_environment"}
    assert data["families"] == MATRIX["families"] and data["import_environment"] == MATRIX["import_environment"]


def test_the_installed_package_carries_a_runtime_form_of_its_own_matrix():
    if not families.RUNTIME_PATH.exists():
        pytest.skip("an editable or source install: the runtime form is made when a wheel is built")
    source = families.MATRIX_PATH.read_bytes()
    assert families._compiled(source) is not None
    assert json.loads(families.RUNTIME_PATH.read_text()) == json.loads(families.runtime_form(source))
    assert families._compiled(source + b"\n# edited\n") is None  # an edited matrix is read itself


def test_install_after_vllm_imports_neither_yaml_nor_packaging_specifiers(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        import torch.distributed, vllm
        import vllm_pg_shim
        before = set(sys.modules)
        status = vllm_pg_shim.install()
        print("RESULT " + json.dumps({"installed": status["installed"], "family": status["family"],
                                      "new": sorted(m for m in set(sys.modules) - before
                                                    if m.split(".")[0] in ("yaml", "packaging"))}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKE), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads([line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    assert res["installed"] and res["family"] == "v1"
    if families.RUNTIME_PATH.exists():
        assert res["new"] == [], res
    else:
        assert "packaging.specifiers" not in res["new"], res
