"""Real-world DICOM at the gateway: what modalities leave out or fill oddly still gets an answer back to the PACS.

The worker's two outside calls are replaced at their seams (``_triage``: the ensemble, ``_send``: the C-STORE to
the PACS), so these run without Triton or Orthanc; the Orthanc round trip of the same cases is in the corpus test.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from client.dicom_files import make_dicom
from gateway import results
from gateway.results import TYPE2_COPIED, UNAVAILABLE, Triaged, read_sr
from gateway.service import Gateway, GatewayConfig
from cxr.labels import LABELS


def _result() -> Triaged:
    return Triaged(label="normal", probabilities={label: 0.2 for label in LABELS},
                   triage={"priority": "routine", "reasons": [], "thresholds_version": "t"}, lung_fraction=0.3,
                   lung_mask=np.pad(np.ones((128, 128), np.uint8), 64), cam=np.zeros((len(LABELS), 8, 8), np.float32),
                   model_versions={"cxr_classifier": "1"}, request_id="req")


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    gw = Gateway(GatewayConfig("CXRGW", 0, "localhost:1", "PACS@localhost:1", tmp_path / "spool"))
    gw.sent = []
    monkeypatch.setattr(gw, "_triage", lambda data, priority=0: (_result(), None, "req"))
    monkeypatch.setattr(gw, "_send", lambda objects, uid: gw.sent.extend(objects) or True)
    return gw


def _spooled(gw: Gateway, edit) -> str:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.random.default_rng(0).random((300, 240)).astype(np.float32))))
    edit(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    gw.spool.accept(buffer.getvalue(), str(ds.SOPInstanceUID))
    return str(ds.SOPInstanceUID)


def _drop(*keywords):
    return lambda ds: [delattr(ds, k) for k in keywords]


def _odd(ds):
    ds.PatientSex, ds.StudyDate, ds.PatientBirthDate, ds.StudyTime = "Unknown", "2026-12-01", "1990-01-01", "25:99"


@pytest.mark.parametrize("edit", [_drop(*TYPE2_COPIED), _drop("StudyTime"), _odd], ids=["no-type2", "no-study-time", "odd-values"])
def test_absent_or_odd_type2_attributes_still_get_a_full_result(gateway, edit):
    uid = _spooled(gateway, edit)
    record = gateway.process(gateway.spool.claim())
    assert record["outcome"] == "result" and gateway.spool.record(uid)["outcome"] == "result"
    assert len(gateway.sent) == 3  # SR + SEG + SC
    for obj in gateway.sent:
        assert all(k in obj for k in TYPE2_COPIED)


def test_a_result_that_cannot_be_built_still_sends_the_unavailable_sr(gateway, monkeypatch):
    def broken(source, result):
        raise ValueError("segment frame does not fit")

    monkeypatch.setattr(results, "build_seg", broken)
    uid = _spooled(gateway, lambda ds: None)
    record = gateway.process(gateway.spool.claim())
    assert record["outcome"] == "unavailable" and "segment frame does not fit" in record["reason"]
    (sr,) = gateway.sent
    assert read_sr(sr)["error"].startswith(f"{UNAVAILABLE}: result could not be built")
    assert gateway.spool.record(uid)["outcome"] == "unavailable"
