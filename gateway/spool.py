"""The gateway's durable spool: nothing accepted is lost, nothing is processed twice.

Layout under the spool directory::

    incoming/<rank>-<received_ns>-<SOPInstanceUID>.dcm   accepted, waiting (rank 0 = high, 1 = medium, 2 = low)
    processing/<same name>                               claimed by a worker
    done/<SOPInstanceUID>.json                           the outcome record (result sent / skipped / failed)
    failed/<same name as incoming>                       kept for a person: processing it failed repeatedly

An instance is written to a temporary file, fsynced and renamed into ``incoming/`` (then the directory is
fsynced) *before* the C-STORE success is returned. Claiming is an atomic rename, so two workers never take
the same file; on start, whatever was left in ``processing/`` by a crash goes back to ``incoming/``.
A resend of an instance that is already done or pending is acknowledged and not queued again.

The rank is the more urgent of the C-STORE's DIMSE Priority and the dataset's Requested Procedure Priority
(0040,1003); an instance that has waited longer than ``max_wait_s`` is taken as rank 0 (escalated), so a flood of
urgent studies cannot starve the rest at the end of the queue.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

# DICOM C-STORE Priority (0000,0700): 0 MEDIUM, 1 HIGH, 2 LOW -> processing rank (lower first).
PRIORITY_RANK = {1: 0, 0: 1, 2: 2}
# Requested Procedure Priority (0040,1003), the order's urgency as the RIS scheduled it -> rank.
PROCEDURE_PRIORITY_RANK = {"STAT": 0, "HIGH": 0, "ROUTINE": 1, "MEDIUM": 1, "LOW": 2}
PRIORITY_NAME = {0: "high", 1: "medium", 2: "low"}  # by rank
_UID = re.compile(r"^[0-9.]{1,64}$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file, never a partial one: a
    temporary file beside it, fsynced, renamed over it, the directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def rank(dicom_priority: int = 0, procedure_priority: str | None = None) -> int:
    """Processing rank: the more urgent of the DIMSE priority and the requested procedure priority."""
    by_procedure = PROCEDURE_PRIORITY_RANK.get(str(procedure_priority or "").strip().upper(), 2)
    return min(PRIORITY_RANK.get(dicom_priority, 1), by_procedure)


class Spool:
    """Args:
        root: the spool directory.
        max_wait_s: an instance waiting longer is taken first, as if it had come with high priority (None: never).
    """

    def __init__(self, root: str | Path, max_wait_s: float | None = None) -> None:
        self.root = Path(root)
        self.max_wait_s = max_wait_s
        self.incoming, self.processing, self.done, self.failed = (
            self.root / d for d in ("incoming", "processing", "done", "failed"))
        for d in (self.incoming, self.processing, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.recover()

    def recover(self) -> int:
        """Return files a crashed run left in ``processing/`` to ``incoming/``; how many."""
        moved = 0
        for path in self.processing.glob("*.dcm"):
            os.replace(path, self.incoming / path.name)
            moved += 1
        if moved:
            fsync_dir(self.incoming)
        return moved

    @staticmethod
    def uid_of(path: Path) -> str:
        return path.stem.split("-", 2)[2]

    @staticmethod
    def rank_of(path: Path) -> int:
        return int(path.name.split("-", 1)[0])

    @staticmethod
    def received_ns(path: Path) -> int:
        return int(path.name.split("-", 2)[1])

    def escalated(self, path: Path, now_ns: int | None = None) -> bool:
        """Whether ``path`` has waited longer than ``max_wait_s`` (and so goes first, at high priority)."""
        waited_ns = (now_ns or time.time_ns()) - self.received_ns(path)
        return self.max_wait_s is not None and waited_ns > self.max_wait_s * 1e9

    def effective_rank(self, path: Path, now_ns: int | None = None) -> int:
        return 0 if self.escalated(path, now_ns) else self.rank_of(path)

    def known(self, sop_uid: str) -> bool:
        """Already done, pending or being processed."""
        if (self.done / f"{sop_uid}.json").exists():
            return True
        return any(self.incoming.glob(f"*-{sop_uid}.dcm")) or any(self.processing.glob(f"*-{sop_uid}.dcm"))

    def accept(self, data: bytes, sop_uid: str, dicom_priority: int = 0, procedure_priority: str | None = None) -> bool:
        """Store ``data`` durably; False if the instance is already known (a resend: acknowledged, not queued).

        Raises:
            ValueError: ``sop_uid`` is not a DICOM UID (it becomes a file name).
            OSError: the disk refused the write (the caller answers "out of resources").
        """
        if not _UID.match(sop_uid):
            raise ValueError(f"invalid SOP Instance UID {sop_uid!r}")
        rank_ = rank(dicom_priority, procedure_priority)
        with self._lock:
            if self.known(sop_uid):
                return False
            name = f"{rank_}-{time.time_ns()}-{sop_uid}.dcm"
            tmp = self.incoming / f".{name}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.incoming / name)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(self.incoming)
            return True

    def claim(self) -> Path | None:
        """Take the most urgent (escalated ones count as urgent), oldest pending instance (moved to
        ``processing/``), or None."""
        now = time.time_ns()
        with self._lock:
            pending = self.incoming.glob("[0-9]-*.dcm")
            for path in sorted(pending, key=lambda p: (self.effective_rank(p, now), self.received_ns(p), p.name)):
                target = self.processing / path.name
                try:
                    os.replace(path, target)
                except FileNotFoundError:
                    continue
                return target
        return None

    def release(self, path: Path) -> None:
        """Give a claimed instance back (e.g. the PACS was unreachable); it will be retried."""
        os.replace(path, self.incoming / path.name)

    def complete(self, path: Path, record: dict, keep: bool = False) -> None:
        """Record the outcome durably, then drop the instance from the queue (unless ``keep``)."""
        uid = self.uid_of(path)
        tmp = self.done / f".{uid}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.done / f"{uid}.json")
        fsync_dir(self.done)
        if not keep:
            path.unlink(missing_ok=True)

    def quarantine(self, path: Path, record: dict) -> None:
        """Keep an instance that cannot be processed in ``failed/`` (not lost, not retried forever) and record it.

        To retry it later, move it back into ``incoming/`` and delete its record in ``done/``.
        """
        os.replace(path, self.failed / path.name)
        fsync_dir(self.failed)
        self.complete(self.failed / path.name, record, keep=True)

    def record(self, sop_uid: str) -> dict | None:
        path = self.done / f"{sop_uid}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def depth(self) -> int:
        return sum(1 for _ in self.incoming.glob("*.dcm")) + sum(1 for _ in self.processing.glob("*.dcm"))
