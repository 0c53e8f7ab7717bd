"""``cxr thresholds fit|gate``: fit the triage thresholds (:mod:`client.thresholds`) or the safety gate
(:mod:`client.gate`) on labelled data; each has its own parser (``cxr thresholds fit --help``)."""
from __future__ import annotations

from client import gate, thresholds


def main(argv: list[str] | None = None):
    argv = list(argv or [])
    if argv[:1] == ["gate"]:
        return gate.main(argv[1:])
    return thresholds.main(argv)
