"""Run the gateway's worklist deliverer alone on an outbox (a stand-in gateway process the test can SIGKILL).

    python -m tests.gateway.outbox_driver OUTBOX HOST:PORT [--sequence]

``--sequence``: HL7 by the sequence number protocol (``Destinations.hl7_sequence``).
"""
from __future__ import annotations

import sys
import time

from gateway.outbox import Deliverer, Destinations, Outbox

if __name__ == "__main__":
    destinations = Destinations(hl7=sys.argv[2], hl7_sequence="--sequence" in sys.argv[3:])
    Deliverer(Outbox(sys.argv[1]), destinations, backoff_s=0.1).start()
    while True:
        time.sleep(1)
