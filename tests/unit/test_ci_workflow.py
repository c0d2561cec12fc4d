"""The CI workflow's generated lists equal their sources, and the scheduled job's matrix edit is right."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import ci_matrix  # noqa: E402
import new_vllm_release  # noqa: E402


def workflow() -> dict:
    return yaml.safe_load(ci_matrix.WORKFLOW.read_text())


def test_the_workflow_is_current():
    text = ci_matrix.WORKFLOW.read_text()
    assert ci_matrix.render(text) == text, "the workflow is stale: run python tools/ci_matrix.py"


def test_one_pg_job_per_release_of_the_matrix():
    assert workflow()["jobs"]["pg"]["strategy"]["matrix"]["release"] == ci_matrix.pg_releases()


def test_the_unit_layer_runs_on_every_python_the_classifiers_name_from_requires_python_up():
    pythons = workflow()["jobs"]["unit"]["strategy"]["matrix"]["python"]
    assert pythons == ci_matrix.python_versions() and pythons
    lowest = next(line for line in ci_matrix.PYPROJECT.read_text().splitlines() if line.startswith("requires-python"))
    assert lowest == f'requires-python = ">={pythons[0]}"'


def noxfile_pythons() -> list[str]:
    import ast

    tree = ast.parse((ci_matrix.ROOT / "noxfile.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "PYTHONS" for t in node.targets))


def test_nox_runs_the_unit_layer_on_the_same_pythons():
    assert noxfile_pythons() == ci_matrix.python_versions()


def test_every_session_the_workflows_run_exists_in_the_noxfile():
    import re
    import shlex

    noxfile = (ci_matrix.ROOT / "noxfile.py").read_text()
    defined = set(re.findall(r"^def (\w+)\(session", noxfile, re.M)) | set(re.findall(r'name="([\w-]+)"', noxfile))
    defined |= {name.split("-{")[0] for name in re.findall(r'name=f"([\w-]+-\{)', noxfile)}
    for workflow in (ci_matrix.ROOT / ".github" / "workflows").glob("*.yml"):
        commands = re.findall(r"^\s*(?:- )?run: .*?\bnox (?:--\S+ )*-s (.*)$", workflow.read_text(), re.M)
        assert commands or workflow.name != "ci.yml"
        for session in (name for command in commands for name in shlex.split(command)):
            # pg-check-${{ matrix.release }}, pg-$VERSION, unit-3.9: the session's stem
            stem = re.sub(r"-(\$\{\{ [^}]* \}\}|\$\w+|[0-9][\w.]*)$", "", session)
            assert stem in defined or session in defined, (workflow.name, session)


MATRIX = """\
tiers:
  e2e-cpu:
    versions: ["0.27.0"]
  pg-gloo:
    default: ["0.5.0"]
    versions: ["0.5.0", "0.32.0",
               "0.33.0"]
  gpu-2x:
    versions: ["0.20.0"]
families:
  old:
    releases: "==0.5.0"   # a comment that stays
    module: old
  new:
    releases: ">=0.11.0,<0.34"
    module: new
"""


def test_adding_a_release_lists_it_and_widens_the_newest_family_only():
    text = new_vllm_release.add(MATRIX, "0.34.1")
    data = yaml.safe_load(text)
    assert data["tiers"]["pg-gloo"]["versions"] == ["0.5.0", "0.32.0", "0.33.0", "0.34.1"]
    assert data["tiers"]["e2e-cpu"]["versions"] == ["0.27.0"] and data["tiers"]["pg-gloo"]["default"] == ["0.5.0"]
    assert data["families"]["new"]["releases"] == ">=0.11.0,<0.35"
    assert data["families"]["old"]["releases"] == "==0.5.0" and "# a comment that stays" in text


def test_adding_a_release_a_family_covers_changes_no_range():
    data = yaml.safe_load(new_vllm_release.add(MATRIX, "0.31.0"))
    assert data["tiers"]["pg-gloo"]["versions"] == ["0.5.0", "0.31.0", "0.32.0", "0.33.0"]
    assert data["families"]["new"]["releases"] == ">=0.11.0,<0.34"


@pytest.mark.parametrize("available,found", [
    (["0.32.0", "0.33.0", "0.34.0", "0.34.1", "0.9.9"], "0.34.1"),
    (["0.32.0", "0.33.0", "0.31.5"], None),  # an older release the matrix skipped is not news
])
def test_the_newest_unlisted_release(available, found):
    assert new_vllm_release.newest_unlisted(available, ["0.5.0", "0.33.0"]) == found
