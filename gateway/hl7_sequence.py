"""HL7's sequence number protocol (v2.5 chapter 2, "Sequence number protocol"), the initiating side: exactly-once
delivery over MLLP to a receiver that implements it.

An acknowledgement can be lost after the receiver has taken the message (a sender killed while the ACK is on the
wire). Original-mode acknowledgement alone then forces a choice between losing the message and sending it twice;
a control id (MSH-10) lets the receiver *recognise* a duplicate, but only sequence numbers let the two sides
agree on what was received. The protocol, as the standard gives it:

- the initiating system numbers its transactions 1, 2, 3, ... in MSH-13 and keeps each one queued, with its
  number, until it is acknowledged; the receiving system stores the number of the last transaction it accepted
  (durably, before it acknowledges) and answers with the number it expects next (MSA-4);
- sequence number 0 is reserved for (re)starting the link: a message with no functional content, answered with
  the expected number. After every start, and after any failure, the gateway sends it first: every queued
  message numbered below the expected one was taken by the receiver (its ACK was what got lost), so it is
  marked delivered without being sent again; the rest are sent in order, one at a time, each accepted only by
  ``AA``/``CA`` with the next number expected.

The numbers are durable here too: a message keeps the number it was first sent with (written into its outbox
file before it is sent), and ``<outbox>/hl7-sequence`` holds the last number given out. Exactly once holds while
the two sides' numbers agree; where they do not (the receiver expects a number this side never gave out, or
one beyond the next queued message: its state was replaced, restored or shared), HL7 asks for a person and so
does this: delivery stops with an error naming both numbers, and nothing more is marked delivered.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import hl7

from gateway import mllp
from gateway.spool import write_durably

START = 0  # MSH-13 of the link-start message


def with_sequence(message: str, number: int) -> str:
    """``message`` (segments separated by ``\\r``) with MSH-13 set to ``number``."""
    msh, sep, rest = message.partition("\r")
    fields = msh.split("|")  # fields[n - 1] is MSH-n (MSH-1 is the separator itself)
    fields += [""] * (13 - len(fields))
    fields[12] = str(number)
    return "|".join(fields) + sep + rest


def start_message(control_id: str, sending_application: str = "CXR-TRIAGE", sending_facility: str = "CXRGW") -> str:
    """The link-start message: MSH only, sequence number 0, message type empty (``^``, as in the standard's
    example: its type and event are not used)."""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    return with_sequence(f"MSH|^~\\&|{sending_application}|{sending_facility}|||{now}||^|{control_id}|P|2.5.1", START)


def expected_number(ack: str) -> int | None:
    """The receiver's expected sequence number (MSA-4) in ``ack``; None if it gave none."""
    msa = hl7.parse(ack).segment("MSA")
    value = str(msa[4]).strip() if len(msa) > 4 else ""
    return int(value) if value.lstrip("-").isdigit() else None


class SequenceNumbers:
    """The initiating system's numbers, durable in one file (the last number given out)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def last(self) -> int:
        text = self.path.read_text().strip() if self.path.exists() else "0"
        if not text.isdigit():
            raise OSError(f"{self.path}: not a sequence number ({text[:20]!r}); the HL7 sequence state is lost "
                          f"and must be set by a person (the receiver's expected number, minus one)")
        return int(text)

    def assign(self, message_file: Path, floor: int = 0) -> int:
        """Give the queued message in ``message_file`` the next number (above ``floor``, the highest number any
        other queued message holds) and write it into the file before the counter: a crash in between leaves
        the number on the message, where ``floor`` finds it on restart."""
        number = max(self.last(), floor) + 1
        message = json.loads(message_file.read_text())
        message["sequence"] = number
        write_durably(message_file, json.dumps(message))
        write_durably(self.path, str(number))
        return number


class SequencedSender:
    """The initiating side of one link: delivers queued HL7 messages (outbox files, :mod:`gateway.outbox`) in
    order by the protocol. ``exchange`` sends one message and returns its acknowledgement (:func:`mllp.exchange`;
    tests pass a fake)."""

    def __init__(self, address: str, counter: str | Path,
                 exchange: Callable[[str, str], str] = mllp.exchange) -> None:
        self.address, self.numbers, self.exchange = address, SequenceNumbers(counter), exchange
        self.expected: int | None = None  # the receiver's expected number; None: start the link first

    def deliver(self, paths: list[Path], delivered: Callable[[Path], None],
                stopping: Callable[[], bool] = lambda: False) -> None:
        """Deliver the messages in ``paths`` (numbered ones first, by number, then the rest in queue order),
        calling ``delivered(path)`` for each the receiver holds. Raises on the first failure or disagreement
        (the caller starts the link again later); the link is then started anew."""
        messages = [(path, json.loads(path.read_text())) for path in paths]
        messages.sort(key=lambda m: (m[1].get("sequence") is None, m[1].get("sequence") or 0))  # stable: queue order
        floor = max((m.get("sequence") or 0 for _, m in messages), default=0)
        try:
            if self.expected is None:
                self.expected = self._start_link(max(self.numbers.last(), floor))
            for path, message in messages:
                if stopping():
                    break
                number = message.get("sequence") or self.numbers.assign(path, floor)
                floor = max(floor, number)
                if number > self.expected:
                    raise OSError(f"HL7 sequence gap: the next queued message is number {number} but the receiver "
                                  f"expects {self.expected} (HL7 asks for a person here)")
                if number == self.expected:
                    ack = self.exchange(self.address, with_sequence(message["payload"], number))
                    code, expected = mllp.ack_code(ack), expected_number(ack)
                    if code not in mllp.ACCEPTED or expected not in (None, number + 1):
                        raise OSError(f"HL7 receiver answered MSA {code} to message {number} (expects {expected})")
                    self.expected = number + 1
                # else: below the expected number, so the receiver took it before a crash lost its ACK: not resent
                delivered(path)
        except Exception:
            self.expected = None
            raise

    def _start_link(self, last_given: int) -> int:
        """The receiver's expected number, from a link-start message; refused unless it lies within what this
        side has given out (``last_given`` + 1 at most)."""
        ack = self.exchange(self.address, start_message(uuid.uuid4().hex[:20].upper()))
        expected = expected_number(ack)
        if expected is None or expected < 1:
            raise OSError("HL7 receiver gave no expected sequence number (MSA-4) to the link-start message: it does "
                          "not implement the sequence number protocol (drop --hl7-sequence)")
        if expected > last_given + 1:
            raise OSError(f"HL7 receiver expects message number {expected}, but this gateway has numbered only "
                          f"{last_given}: the two sides disagree (HL7 asks for a person here)")
        return expected
