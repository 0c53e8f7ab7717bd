"""The spool keeps everything accepted, in priority order, exactly once, across restarts."""
from __future__ import annotations

import pytest

from gateway.spool import Spool


def test_priority_then_arrival_order(tmp_path):
    spool = Spool(tmp_path)
    spool.accept(b"a", "1.2.1", dicom_priority=2)  # LOW
    spool.accept(b"b", "1.2.2", dicom_priority=0)  # MEDIUM
    spool.accept(b"c", "1.2.3", dicom_priority=1)  # HIGH
    spool.accept(b"d", "1.2.4", dicom_priority=0)
    order = []
    while (path := spool.claim()) is not None:
        order.append(Spool.uid_of(path))
        spool.complete(path, {"outcome": "result"})
    assert order == ["1.2.3", "1.2.2", "1.2.4", "1.2.1"]
    assert spool.depth() == 0 and spool.record("1.2.3") == {"outcome": "result"}


def test_resend_is_acknowledged_but_not_queued_twice(tmp_path):
    spool = Spool(tmp_path)
    assert spool.accept(b"x", "1.2.9") is True
    assert spool.accept(b"x", "1.2.9") is False  # pending
    path = spool.claim()
    assert spool.accept(b"x", "1.2.9") is False  # in progress
    spool.complete(path, {"outcome": "result"})
    assert spool.accept(b"x", "1.2.9") is False  # done
    assert spool.depth() == 0


def test_restart_returns_claimed_work_to_the_queue(tmp_path):
    spool = Spool(tmp_path)
    spool.accept(b"payload", "1.2.5")
    claimed = spool.claim()
    assert spool.claim() is None
    # a crash: a new Spool on the same directory
    again = Spool(tmp_path)
    path = again.claim()
    assert path is not None and path.name == claimed.name and path.read_bytes() == b"payload"


def test_write_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    spool = Spool(tmp_path)

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.spool.os.fsync", full)
    with pytest.raises(OSError):
        spool.accept(b"x", "1.2.6")
    assert spool.depth() == 0 and not list((tmp_path / "incoming").iterdir())


def test_uid_that_is_not_a_uid_is_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid SOP Instance UID"):
        Spool(tmp_path).accept(b"x", "../../etc/passwd")


def test_requested_procedure_priority_ranks_with_the_dimse_priority(tmp_path):
    spool = Spool(tmp_path)
    spool.accept(b"a", "1.3.1", dicom_priority=0)  # MEDIUM, no procedure priority
    spool.accept(b"b", "1.3.2", dicom_priority=2, procedure_priority="STAT")  # LOW by DIMSE, STAT by the order
    spool.accept(b"c", "1.3.3", dicom_priority=1, procedure_priority="LOW")  # the more urgent of the two: HIGH
    spool.accept(b"d", "1.3.4", dicom_priority=2, procedure_priority="ROUTINE")
    order = []
    while (path := spool.claim()) is not None:
        order.append((Spool.uid_of(path), Spool.rank_of(path)))
        spool.complete(path, {"outcome": "result"})
    assert order == [("1.3.2", 0), ("1.3.3", 0), ("1.3.1", 1), ("1.3.4", 1)]


def test_a_study_waiting_too_long_goes_first(tmp_path, monkeypatch):
    import time

    clock = [10**18]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    spool = Spool(tmp_path, max_wait_s=60)
    spool.accept(b"old", "1.4.1", dicom_priority=2)  # LOW
    clock[0] += 61 * 10**9
    spool.accept(b"new", "1.4.2", dicom_priority=1)  # HIGH, but the LOW one has waited 61 s > 60 s
    first = spool.claim()
    assert Spool.uid_of(first) == "1.4.1" and spool.escalated(first) and Spool.rank_of(first) == 2
    second = spool.claim()
    assert Spool.uid_of(second) == "1.4.2" and not spool.escalated(second)
    assert not Spool(tmp_path / "other").escalated(first)  # max_wait_s None: never escalated
