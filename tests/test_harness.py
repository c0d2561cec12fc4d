"""The test harness itself: what a bounded run leaves behind when it hangs."""
from __future__ import annotations

import sys
import textwrap

from support.harness import STACK_DUMP_START, log_tail, run_bounded

HANGS_IN_PARENT_AND_CHILD = textwrap.dedent("""
    import os, time

    def child_waits_here():
        time.sleep(120)

    def parent_waits_here():
        time.sleep(120)

    if os.fork() == 0:
        child_waits_here()
    parent_waits_here()
""")


def test_a_run_past_its_bound_leaves_every_process_stack_in_its_log(tmp_path):
    returncode, timed_out, elapsed, leftovers = run_bounded([sys.executable, "-c", HANGS_IN_PARENT_AND_CHILD],
                                                            timeout=3, log_path=tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert timed_out and elapsed < 60
    assert "child_waits_here" in log and "parent_waits_here" in log, log
    assert log_tail(log + "x" * 10_000).startswith(STACK_DUMP_START)


def test_a_run_stopped_once_its_work_is_done_is_not_dumped(tmp_path):
    returncode, timed_out, elapsed, leftovers = run_bounded([sys.executable, "-c", HANGS_IN_PARENT_AND_CHILD],
                                                            timeout=30, log_path=tmp_path / "log",
                                                            finished=lambda: True, exit_grace=0)
    assert timed_out and elapsed < 20
    assert STACK_DUMP_START not in (tmp_path / "log").read_text()
