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
  marked delivered without being sent again; the rest are sent in order, one at a time.

The numbers are durable here too: a message keeps the number it was first sent with (written into its outbox
file before it is sent), and ``<outbox>/hl7-sequence`` holds the last number given out.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import hl7

from gateway.spool import fsync_dir

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
        return int(self.path.read_text()) if self.path.exists() else 0

    def assign(self, message_file: Path, floor: int = 0) -> int:
        """Give the queued message in ``message_file`` the next number (above ``floor``, the highest number any
        other queued message holds) and write it into the file before the counter: a crash in between leaves
        the number on the message, where ``floor`` finds it on restart."""
        number = max(self.last(), floor) + 1
        message = json.loads(message_file.read_text())
        message["sequence"] = number
        tmp = message_file.with_name(f".{message_file.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(message, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, message_file)
        fsync_dir(message_file.parent)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(str(number))
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        return number
