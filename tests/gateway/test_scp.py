"""C-STORE handling without a network: what the PACS is told in each case."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pydicom
import pytest

from client.dicom_files import make_dicom
from gateway.service import OUT_OF_RESOURCES, Gateway, GatewayConfig, parse_destination
from cxr.acceptance import tag_refusal


@pytest.fixture
def gateway(tmp_path):
    config = GatewayConfig("CXRGW", 0, "localhost:1", "PACS@127.0.0.1:104", tmp_path / "spool")
    return Gateway(config)


def _event(data: bytes, priority: int = 0):
    ds = pydicom.dcmread(io.BytesIO(data))
    request = SimpleNamespace(AffectedSOPInstanceUID=ds.SOPInstanceUID, Priority=priority)
    return SimpleNamespace(request=request, encoded_dataset=lambda: data), ds.SOPInstanceUID


def test_accepted_instance_is_in_the_spool_before_success(gateway, xray_pixels):
    event, uid = _event(make_dicom(xray_pixels), priority=1)
    assert gateway._on_store(event) == 0x0000
    path = gateway.spool.claim()
    assert path.name.startswith("0-") and gateway.spool.uid_of(path) == uid  # HIGH priority ranks first


def test_full_disk_answers_out_of_resources_and_keeps_nothing(gateway, xray_pixels, monkeypatch):
    def no_space(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.spool.os.fsync", no_space)
    event, _ = _event(make_dicom(xray_pixels))
    assert gateway._on_store(event) == OUT_OF_RESOURCES == 0xA700
    assert gateway.spool.depth() == 0
    assert gateway.metrics.registry.get_sample_value("cxr_gateway_failed_total", {"stage": "spool"}) == 1


@pytest.mark.parametrize("changes,reason", [
    ({"Modality": "CT"}, "modality CT is not CR/DX"),
    ({"Modality": None}, "modality missing is not CR/DX"),
    ({"BodyPartExamined": "HAND"}, "body part HAND is not chest"),
    ({"ViewPosition": "LL"}, "view position LL is not frontal"),
    ({}, None),
    ({"Modality": "DX", "ViewPosition": "AP"}, None),
    ({"BodyPartExamined": None, "ViewPosition": None}, None),  # type 2/3, often absent: the pixels decide
    ({"BodyPartExamined": "", "ViewPosition": ""}, None),
])
def test_only_cr_dx_chest_frontal_views_are_triaged(xray_pixels, changes, reason):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray_pixels)))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    found = tag_refusal(ds)
    assert (found is None) if reason is None else found.startswith(reason)


def test_destination_must_name_aet_host_and_port():
    assert parse_destination("ORTHANC@10.0.0.5:4242") == ("ORTHANC", "10.0.0.5", 4242)
    with pytest.raises(ValueError, match="AET@HOST:PORT"):
        parse_destination("10.0.0.5:4242")


def test_an_instance_that_keeps_failing_is_kept_aside_not_lost_nor_retried_forever(tmp_path):
    from ops.ports import free_port
    from tests.gateway.conftest import wait_until

    config = GatewayConfig("CXRGW", free_port(), "localhost:1", "PACS@127.0.0.1:104", tmp_path / "spool",
                           host="127.0.0.1", max_attempts=3, retry_wait_s=0.05)
    gateway = Gateway(config)
    gateway.spool.accept(b"this is not a DICOM file", "1.2.3.4")  # spooled, but unreadable when processed
    gateway.start()
    try:
        wait_until(lambda: gateway.spool.record("1.2.3.4") is not None, timeout_s=30, what="the instance to be given up")
    finally:
        gateway.stop()
    record = gateway.spool.record("1.2.3.4")
    assert record["outcome"] == "failed" and record["reason"].startswith("processing failed 3 times")
    assert [p.name.split("-", 2)[2] for p in gateway.spool.failed.iterdir()] == ["1.2.3.4.dcm"]  # kept for a person
    assert gateway.spool.depth() == 0
    assert gateway.metrics.registry.get_sample_value("cxr_gateway_failed_total", {"stage": "process"}) == 3


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs) for the spool; needs root (CAP_SYS_ADMIN), as on the CI machines."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the monkeypatched full-disk test still runs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_refuses_c_store_and_recovers_when_space_returns(tiny_disk, xray_pixels):
    """C-STOREs of 340 KB instances over the network into a 1 MiB spool: the ones that do not fit are refused."""
    from ops.ports import free_port
    from tests.gateway.conftest import SCU_AET, c_store

    config = GatewayConfig("CXRGW", free_port(), "localhost:1", "PACS@127.0.0.1:104", tiny_disk / "spool",
                           allow_ae=(SCU_AET,), host="127.0.0.1", workers=0)
    gateway = Gateway(config).start()
    try:
        datasets = [pydicom.dcmread(io.BytesIO(make_dicom(xray_pixels))) for _ in range(5)]
        statuses = c_store(config.port, datasets)
        accepted = statuses.count(0x0000)
        assert statuses == [0x0000] * accepted + [OUT_OF_RESOURCES] * (len(datasets) - accepted)
        assert 1 <= accepted < len(datasets)
        assert gateway.spool.depth() == accepted  # what was acknowledged is there; no partial files left behind
        assert not [p for p in gateway.spool.incoming.iterdir() if p.name.endswith(".tmp")]

        next(gateway.spool.incoming.glob("*.dcm")).unlink()  # space comes back (an operator, or a worker)
        assert c_store(config.port, datasets[-1:]) == [0x0000]
    finally:
        gateway.stop()


def test_requested_procedure_priority_in_the_dataset_ranks_the_instance(gateway, xray_pixels):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray_pixels)))
    ds.RequestedProcedurePriority = "STAT"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    event, _ = _event(buffer.getvalue(), priority=2)  # DIMSE LOW
    assert gateway._on_store(event) == 0x0000
    assert gateway.spool.claim().name.startswith("0-")  # the order's STAT wins


def test_an_escalated_study_is_sent_to_triton_at_high_priority(gateway, xray_pixels, monkeypatch):
    import time

    sent = []
    monkeypatch.setattr(gateway, "_triage", lambda data, priority=0: sent.append(priority) or (None, "x", "r"))
    monkeypatch.setattr(gateway, "_send", lambda objects, uid: True)
    event, _ = _event(make_dicom(xray_pixels), priority=2)  # LOW
    gateway._on_store(event)
    path = gateway.spool.claim()
    now = time.time_ns() + int(gateway.config.max_wait_s * 1e9) + 1  # as if it had waited past max_wait_s
    monkeypatch.setattr(time, "time_ns", lambda: now)
    gateway.process(path)
    assert sent == [1] and gateway.metrics.registry.get_sample_value("cxr_gateway_escalated_total") == 1
