"""Free TCP ports on the loopback interface, for tests that start servers (gloo, Ray nodes)."""

from __future__ import annotations

import socket


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct ports free right now (all held open together while picking, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
