"""Ports handed to servers that tests and benchmarks start."""
from __future__ import annotations

import socket

from ops.ports import free_port


def test_free_port_never_hands_out_a_port_twice_and_each_is_bindable():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:  # the last one is free to bind now
        s.bind(("127.0.0.1", ports[-1]))
