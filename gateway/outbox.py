"""Durable delivery of worklist messages (HL7 over MLLP, FHIR and webhook over HTTP), like the spool's results.

Layout under ``<spool>/outbox``::

    pending/<channel>-<message id>.json   written (fsynced) before the study's outcome is recorded
    sent/<channel>-<message id>.json      moved here once the receiver acknowledged it

A message is queued once per id (re-processing a study after a crash finds it pending or sent and does not queue
it again) and removed from ``pending/`` only after the receiver's acknowledgement (HL7 ``MSA|AA``/``CA``, HTTP
2xx). A crash between the acknowledgement and the move sends that one message again, with the same id (HL7
MSH-10, FHIR identifiers created ``ifNoneExist``), which the receiver can drop: at-least-once delivery with
idempotent ids. With ``Destinations.hl7_sequence`` HL7 goes by the sequence number protocol
(:mod:`gateway.hl7_sequence`): in order, and exactly once to a receiver that implements it. Failed sends are
retried, doubling the wait up to ``max_backoff_s``, forever: a message is never dropped.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway import mllp
from gateway.hl7_sequence import SequencedSender
from gateway.spool import fsync_dir, write_durably

log = logging.getLogger("cxr.gateway.outbox")
CHANNELS = ("hl7", "fhir", "webhook")


@dataclass(frozen=True)
class Destinations:
    """Where worklist messages go (None: that channel is off)."""

    hl7: str | None = None  # HOST:PORT of an MLLP listener (RIS / interface engine)
    fhir: str | None = None  # base URL of a FHIR server (the transaction bundle is POSTed to it)
    webhook: str | None = None  # URL POSTed for urgent results
    hl7_sequence: bool = False  # HL7 by the sequence number protocol: in order, exactly once (gateway.hl7_sequence)

    def enabled(self) -> tuple[str, ...]:
        return tuple(c for c in CHANNELS if getattr(self, c))


class Outbox:
    def __init__(self, root: str | Path) -> None:
        self.pending, self.sent = Path(root) / "pending", Path(root) / "sent"
        for d in (self.pending, self.sent):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def put(self, channel: str, message_id: str, payload: str | dict) -> bool:
        """Queue ``payload`` durably; False if this message id is already pending or sent."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        name = f"{channel}-{message_id}.json"
        with self._lock:
            if (self.pending / name).exists() or (self.sent / name).exists():
                return False
            message = {"channel": channel, "id": message_id, "payload": payload, "queued": time.time()}
            write_durably(self.pending / name, json.dumps(message))
            return True

    def waiting(self) -> list[Path]:
        return sorted(self.pending.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)

    def delivered(self, path: Path) -> None:
        os.replace(path, self.sent / path.name)
        fsync_dir(self.sent)

    def depth(self) -> int:
        return sum(1 for _ in self.pending.glob("*.json"))


def send_http(url: str, document: dict, timeout_s: float = 10.0, content_type: str = "application/json") -> None:
    """POST a JSON document; any non-2xx answer or network error raises ``OSError``."""
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # HTTPError (an OSError) on 4xx/5xx
        response.read()


class Deliverer:
    """Drains an :class:`Outbox` to its destinations in a background thread, retrying with backoff."""

    def __init__(self, outbox: Outbox, destinations: Destinations, on_result=None,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        self.outbox, self.destinations = outbox, destinations
        self.on_result = on_result or (lambda channel, ok: None)  # metrics hook
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[str, tuple[float, float]] = {}  # file name -> (next attempt time, current wait)
        self._sequenced = SequencedSender(destinations.hl7, outbox.pending.parent / "hl7-sequence") \
            if destinations.hl7 and destinations.hl7_sequence else None

    def send(self, channel: str, payload) -> None:
        target = getattr(self.destinations, channel)
        if channel == "hl7":
            mllp.send(target, payload)
        elif channel == "fhir":
            send_http(target, payload, content_type="application/fhir+json")
        else:
            send_http(target, payload)

    def drain_once(self) -> int:
        """Try every pending message whose retry time has come; how many were delivered."""
        delivered, waiting = 0, self.outbox.waiting()
        if self._sequenced is not None:
            delivered += self._drain_sequenced([p for p in waiting if p.name.startswith("hl7-")])
            waiting = [p for p in waiting if not p.name.startswith("hl7-")]
        for path in waiting:
            if self._stop.is_set():
                break
            next_at, wait = self._retry_at.get(path.name, (0.0, self.backoff_s))
            if time.monotonic() < next_at:
                continue
            message = json.loads(path.read_text())
            try:
                self.send(message["channel"], message["payload"])
            except Exception as exc:  # unreachable, refused, timed out: retry later, never drop
                self._retry_at[path.name] = (time.monotonic() + wait, min(wait * 2, self.max_backoff_s))
                self.on_result(message["channel"], False)
                log.warning("%s message %s not delivered (%s); will retry", message["channel"], message["id"][-8:],
                            type(exc).__name__)
                continue
            self.outbox.delivered(path)
            self._retry_at.pop(path.name, None)
            self.on_result(message["channel"], True)
            delivered += 1
        return delivered

    def _drain_sequenced(self, paths: list[Path]) -> int:
        """HL7 by the sequence number protocol (:class:`SequencedSender`); on any failure it stops, and the link is
        started again after the backoff."""
        next_at, wait = self._retry_at.get("hl7", (0.0, self.backoff_s))
        if not paths or time.monotonic() < next_at:
            return 0
        delivered = 0

        def done(path: Path) -> None:
            nonlocal delivered
            self.outbox.delivered(path)
            self.on_result("hl7", True)
            delivered += 1

        try:
            self._sequenced.deliver(paths, done, self._stop.is_set)
        except Exception as exc:  # unreachable, refused, out of step: start the link again later, never drop
            self._retry_at["hl7"] = (time.monotonic() + wait, min(wait * 2, self.max_backoff_s))
            self.on_result("hl7", False)
            log.warning("hl7 delivery stopped (%s: %s); will start the link again", type(exc).__name__, exc)
            return delivered
        self._retry_at.pop("hl7", None)
        return delivered

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.drain_once()
            self._wake.wait(0.5)
            self._wake.clear()

    def start(self) -> "Deliverer":
        self._thread = threading.Thread(target=self._run, name="cxr-gateway-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
