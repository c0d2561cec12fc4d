"""Shared test set-up, and ``--record-matrix``: write an end-to-end run's outcome into compat_matrix.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/support as the package "support"


def pytest_addoption(parser):
    parser.addoption("--record-matrix", action="store_true",
                     help="record this run's end-to-end outcome for the installed vLLM in compat_matrix.yaml")


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        if "test_e2e_seed.py" in report.nodeid:
            _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--record-matrix") or not _outcomes:
        return
    from support.matrix_table import rewrite
    from support.record import record_e2e

    record_e2e(_outcomes, Path(__file__).parents[1] / "compat_matrix.yaml")
    rewrite()  # the README's table follows the matrix
