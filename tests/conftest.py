"""Shared test set-up, and ``--record-matrix``: write a tier's run outcome into compat_records.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/support as the package "support"


def pytest_addoption(parser):
    parser.addoption("--record-matrix", action="store_true",
                     help="record this run's outcome for the installed vLLM in compat_records.yaml")
    parser.addoption("--record-frameworks", action="store_true",
                     help="record the framework shapes' outcomes (tests/test_frameworks.py) in docs/frameworks.yaml")


_outcomes: dict[str, dict[str, str]] = {}  # test file -> nodeid -> outcome
_details: dict[str, str] = {}  # what tests reported with record_property (e.g. the stock outcome)
_deselected: dict[str, int] = {}  # test file -> tests of it this run left out


OPT_IN_MARKERS = ("slow", "stock_frameworks", "nodes")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow``, ``stock_frameworks`` or ``nodes`` run only when selected by marker (``pytest -m slow``;
    ``nodes``: ``nox -s nodes``); otherwise they are skipped."""
    selected = config.getoption("-m") or ""
    for marker in OPT_IN_MARKERS:
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=f"{marker}: run with pytest -m {marker}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def model():
    """The tiny random Llama the real-engine tests serve (built once, then cached)."""
    from support.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def clean_tokens(tmp_path_factory, model):
    """What the seed scenario's prompts give in a clean process that owns no WORLD (no shim)."""
    from support.harness import run_scenario

    out = run_scenario(tmp_path_factory.mktemp("clean"), model=model, activation="clean", in_process=True,
                       world=1, timeout=240)
    assert out.returncode == 0 and not out.timed_out, out.describe()
    return out.ranks[0]["tokens"][0]


def pytest_deselected(items):
    """A run that leaves some of a tier's tests out (``-k``, ``-m``) records a partial row, never a whole one."""
    for item in items:
        test_file = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        _deselected[test_file] = _deselected.get(test_file, 0) + 1


def pytest_runtest_logreport(report):
    from support.record import TIERS

    test_file = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    if test_file in TIERS and (report.when == "call" or report.outcome != "passed"):
        _outcomes.setdefault(test_file, {})[report.nodeid] = report.outcome
        _details.update(dict(report.user_properties))


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--record-matrix") or not _outcomes:
        return
    from support.matrix_table import rewrite
    from support.record import record

    for test_file, outcomes in _outcomes.items():
        record(outcomes, Path(__file__).parents[1] / "compat_matrix.yaml", test_file,
               {"stock_outcome": "failure", **_details}, left_out=_deselected.get(test_file, 0))
    rewrite()  # docs/compatibility.md and the README's family summary follow the matrix
