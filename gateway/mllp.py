"""One HL7 v2 message over MLLP (python-hl7's client): send it, read its acknowledgement."""
from __future__ import annotations

import socket

import hl7
from hl7.client import MLLPClient

ACCEPTED = ("AA", "CA")  # MSA-1 of an accepting acknowledgement (original / enhanced mode)


def exchange(address: str, message: str, timeout_s: float = 10.0) -> str:
    """Send ``message`` to ``HOST:PORT``; its acknowledgement (text). ``OSError`` on network failure or timeout."""
    host, port = address.rsplit(":", 1)
    client = MLLPClient(host, int(port))
    try:
        client.socket.settimeout(timeout_s)
        ack = client.send_message(message)
    except socket.timeout as exc:
        raise OSError(f"no ACK from {address} within {timeout_s:.0f} s") from exc
    finally:
        client.close()
    return ack.decode() if isinstance(ack, bytes) else str(ack)


def ack_code(ack: str) -> str:
    """MSA-1 of an acknowledgement."""
    return str(hl7.parse(ack).segment("MSA")[1])


def send(address: str, message: str, timeout_s: float = 10.0) -> None:
    """Send one message and require an accepting acknowledgement (MSA-1 ``AA`` or ``CA``)."""
    code = ack_code(exchange(address, message, timeout_s))
    if code not in ACCEPTED:
        raise OSError(f"HL7 receiver {address} answered MSA {code}")
