"""C-STORE handling without a network: what the PACS is told in each case."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pydicom
import pytest

from client.dicom_files import make_dicom
from client.gateway.service import OUT_OF_RESOURCES, Gateway, GatewayConfig, not_triaged_reason, parse_destination


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

    monkeypatch.setattr("client.gateway.spool.os.fsync", no_space)
    event, _ = _event(make_dicom(xray_pixels))
    assert gateway._on_store(event) == OUT_OF_RESOURCES == 0xA700
    assert gateway.spool.depth() == 0
    assert gateway.metrics.registry.get_sample_value("cxr_gateway_failed_total", {"stage": "spool"}) == 1


@pytest.mark.parametrize("changes,reason", [
    ({"Modality": "CT"}, "modality CT is not CR/DX"),
    ({"BodyPartExamined": "HAND"}, "body part HAND is not chest"),
    ({"ViewPosition": "LL"}, "view position LL is not frontal"),
    ({}, None),
    ({"Modality": "DX", "ViewPosition": "AP"}, None),
])
def test_only_cr_dx_chest_frontal_views_are_triaged(xray_pixels, changes, reason):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray_pixels)))
    for key, value in changes.items():
        setattr(ds, key, value)
    found = not_triaged_reason(ds)
    assert (found is None) if reason is None else found.startswith(reason)


def test_destination_must_name_aet_host_and_port():
    assert parse_destination("ORTHANC@10.0.0.5:4242") == ("ORTHANC", "10.0.0.5", 4242)
    with pytest.raises(ValueError, match="AET@HOST:PORT"):
        parse_destination("10.0.0.5:4242")
