"""Free TCP ports on loopback, for tests and benchmarks that start servers."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port that is free on loopback right now (for tests and benchmarks that start a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
