"""Two simulated nodes on one machine: network namespaces joined by a veth pair, made and removed by the tests.

Each node is a network namespace with its loopback up, one end of a veth pair addressed in 198.18.0.0/24 (RFC
2544's range for testing interconnects, never routed on real networks) and a default route through it, so that
"my address" look-ups (vLLM's ``get_ip()`` connects a UDP socket to a public address) find the node's own
address as on a real host. Ranks run there through :func:`node_command`, which also gives the process a UTS
namespace with the node's host name: the shim's roll-call tells members apart by host name, as on real nodes.

Everything made here carries the prefix ``vpgs`` and the pid of the process that made it; :func:`remove_leftovers`
deletes what a killed run left behind, never the nodes of a run still going.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from collections.abc import Iterator

PREFIX = "vpgs"
SUBNET = "198.18.0"


@dataclass(frozen=True)
class Node:
    index: int
    namespace: str
    interface: str
    address: str
    hostname: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2's `ip` or util-linux's `unshare` is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def _owner_alive(name: str) -> bool:
    """Namespaces are named ``vpgs-<pid of the process that made them>-n<i>``: is that process still running?"""
    pid = name.split("-")[1] if name.count("-") >= 2 else ""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Remove the nodes of runs that were killed before they could (another run's, still going, stay)."""
    for name in namespaces():
        if not _owner_alive(name):
            _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def two_nodes() -> Iterator[list[Node]]:
    """Two nodes joined by a veth pair; removed on exit, also after a failure (deleting a namespace deletes the
    veth end inside it, and with it the pair)."""
    tag = str(os.getpid())  # interface names stay within Linux's 15 characters: vpgs + 7 digits + n0
    nodes = [Node(i, f"{PREFIX}-{tag}-n{i}", f"{PREFIX}{tag}n{i}", f"{SUBNET}.{i + 1}", f"node{i}") for i in (0, 1)]
    try:
        for node in nodes:
            _ip("netns", "add", node.namespace)
        _ip("link", "add", nodes[0].interface, "type", "veth", "peer", "name", nodes[1].interface)
        for node in nodes:
            _ip("link", "set", node.interface, "netns", node.namespace)
            inside = ("-n", node.namespace)
            _ip(*inside, "addr", "add", f"{node.address}/24", "dev", node.interface)
            _ip(*inside, "link", "set", node.interface, "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "route", "add", "default", "dev", node.interface)
        yield nodes
    finally:
        for node in nodes:
            _ip("netns", "del", node.namespace, check=False)
        _ip("link", "del", nodes[0].interface, check=False)  # only if it never moved into its namespace


def node_command(node: Node, argv: list[str]) -> list[str]:
    """``argv`` run on ``node``: its network namespace, and a UTS namespace named after it."""
    script = 'hostname "$0" && exec "$@"'
    return ["ip", "netns", "exec", node.namespace, "unshare", "--uts", "--", "sh", "-c", script, node.hostname,
            *argv]
