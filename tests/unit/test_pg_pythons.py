"""The pg tier's Python per release (compat_matrix.yaml ``tiers.pg-gloo.python``, written by tools/pg_pythons.py):
every release has one, of the Pythons the package claims, and the noxfile's pg sessions run on it."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from packaging.version import Version

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import ci_matrix  # noqa: E402
import pg_pythons  # noqa: E402


def test_every_pg_release_has_one_python_of_those_the_package_claims():
    text = ci_matrix.MATRIX.read_text()
    block = yaml.safe_load(text)["tiers"]["pg-gloo"]["python"]
    listed = [v for versions in block.values() for v in versions]
    assert sorted(listed) == sorted(ci_matrix.pg_releases()), "run python tools/pg_pythons.py"
    assert len(listed) == len(set(listed))
    assert set(block) <= set(ci_matrix.python_versions())


def test_the_pg_sessions_run_on_the_python_of_their_release():
    noxfile = (ci_matrix.ROOT / "noxfile.py").read_text()
    sessions = re.findall(r'^\s*@nox\.session\(name=f"pg-[^\n]*', noxfile, re.M)
    assert len(sessions) == 2 and all("python=PG_PYTHON[_version]" in s for s in sessions), sessions
    assert 'PG["python"]' in noxfile


def wheel(name: str, requires: str | None = None) -> dict:
    return {"filename": name, "requires-python": requires}


def test_a_wheel_admits_a_python_by_its_tags_and_requires_python():
    specific = wheel("vllm-0.5.0-cp311-cp311-manylinux1_x86_64.whl", ">=3.8")
    assert pg_pythons.wheel_admits(specific, "3.11") and not pg_pythons.wheel_admits(specific, "3.12")
    stable = wheel("vllm-0.8.5-cp38-abi3-manylinux1_x86_64.whl", "<3.13,>=3.9")
    assert pg_pythons.wheel_admits(stable, "3.12") and not pg_pythons.wheel_admits(stable, "3.13")
    assert not pg_pythons.wheel_admits(wheel("vllm-1.0-cp312-abi3-manylinux1_x86_64.whl"), "3.11")


MATRIX = """\
tiers:
  pg-gloo:
    default: ["0.5.0"]
    versions: ["0.5.0",
               "0.8.5"]
  # the next tier
  gpu-2x:
    versions: ["0.20.0"]
"""


def test_render_adds_the_block_to_the_tier_then_replaces_it_keeping_the_rest():
    added = pg_pythons.render(MATRIX, {"0.5.0": "3.11", "0.8.5": "3.12"})
    assert pg_pythons.pythons_by_release(added) == {"0.5.0": "3.11", "0.8.5": "3.12"}
    assert added.replace('    python:\n      "3.11": ["0.5.0"]\n      "3.12": ["0.8.5"]\n', "") == MATRIX
    replaced = pg_pythons.render(added, {"0.5.0": "3.11", "0.8.5": "3.11"})
    assert pg_pythons.pythons_by_release(replaced) == {"0.5.0": "3.11", "0.8.5": "3.11"}
    assert yaml.safe_load(replaced)["tiers"]["gpu-2x"] == {"versions": ["0.20.0"]}
    assert "  # the next tier\n" in replaced


def test_a_package_with_compiled_wheels_but_none_for_a_python_keeps_the_release_off_it(monkeypatch):
    files = {
        "msgspec": [wheel(f"msgspec-0.18.6-cp{n}-cp{n}-manylinux_2_17_x86_64.whl") for n in (38, 311, 312)]
        + [wheel("msgspec-0.18.6.tar.gz")],
        "pure": [wheel("pure-1.0-py3-none-any.whl"), wheel("pure-1.0-cp312-cp312-manylinux_2_17_x86_64.whl")],
        "sdist-only": [wheel("sdist-only-0.1.tar.gz")],
    }
    monkeypatch.setattr(pg_pythons, "simple_files", lambda project: tuple(files[project]))
    pg_pythons.linux_x86_64_wheels.cache_clear()
    try:
        assert pg_pythons.lacks_wheel_for("msgspec", Version("0.18.6"), "3.13")
        assert not pg_pythons.lacks_wheel_for("msgspec", Version("0.18.6"), "3.12")
        assert not pg_pythons.lacks_wheel_for("pure", Version("1.0"), "3.13")  # its pure wheel installs anywhere
        assert not pg_pythons.lacks_wheel_for("sdist-only", Version("0.1"), "3.13")  # pure Python, built anywhere
    finally:
        pg_pythons.linux_x86_64_wheels.cache_clear()


def test_a_package_pypi_has_no_files_of_from_the_day_is_named_in_uvs_words():
    for said in ("Because there is no version of xgrammar{platform_machine == 'x86_64'}==0.1.16 and vllm",
                 "Because there are no versions of pyairports and outlines>=0.0.43 depends on pyairports"):
        assert pg_pythons.UNAVAILABLE.search(said).group(1) in ("xgrammar", "pyairports")
