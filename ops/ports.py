"""Free TCP ports on loopback, for tests and benchmarks that start servers."""
from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on loopback right now (for tests and benchmarks that start a server).

    Never the same port twice in one process: the kernel may hand a just-released port out again, and a server
    asked for three ports back to back (HTTP, gRPC, metrics) was once given one port for two of them.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
