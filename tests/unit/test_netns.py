"""The simulated nodes (tests/support/netns.py) are removed after every run: a failed one, and a killed one's
leftovers before the next. Needs root and iproute2 (skipped otherwise, saying why); no vLLM, no torch."""
import os
import subprocess

import pytest

from support import netns

_why_not = netns.unavailable()
pytestmark = pytest.mark.skipif(bool(_why_not), reason=f"network namespaces cannot be made here: {_why_not}")


def test_two_nodes_reach_each_other_and_are_gone_after_a_failure():
    with pytest.raises(RuntimeError, match="the scenario failed"):
        with netns.two_nodes() as nodes:
            assert set(netns.namespaces()) >= {n.namespace for n in nodes}
            probe = "import socket; socket.create_connection(('{}', 9), timeout=5)"
            # nothing listens on port 9 there: a refused connection proves the route, a timeout would not
            reached = subprocess.run(netns.node_command(nodes[0], ["python3", "-c", probe.format(nodes[1].address)]),
                                     capture_output=True, text=True, timeout=60)
            assert "ConnectionRefusedError" in reached.stderr, reached.stderr
            named = subprocess.run(netns.node_command(nodes[1], ["hostname"]), capture_output=True, text=True,
                                   timeout=60)
            assert named.stdout.strip() == "node1"
            raise RuntimeError("the scenario failed")
    assert not [n for n in netns.namespaces() if n in {node.namespace for node in nodes}]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not any(node.interface in links for node in nodes)


def test_a_killed_runs_namespaces_are_removed_before_the_next_and_a_live_runs_stay():
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale, live = f"{netns.PREFIX}-{ended.pid}-n0", f"{netns.PREFIX}-{os.getpid()}-n9"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        netns.remove_leftovers()
        assert stale not in netns.namespaces() and live in netns.namespaces()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
