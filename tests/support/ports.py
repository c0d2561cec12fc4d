"""Ports for the scenarios' stores."""
from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket is held until all are chosen (one closed before the next is bound can
    be handed out again, and two worlds on one port wait on each other's keys)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
