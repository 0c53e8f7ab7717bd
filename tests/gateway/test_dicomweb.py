"""DICOMweb against a real Orthanc with its DICOMweb plugin: results stored by STOW-RS, and ``cxr backfill``
finding studies by QIDO-RS and fetching them by WADO-RS into the spool, skipping what is already done."""
from __future__ import annotations

import io
from datetime import date

import numpy as np
import pydicom
import pytest

from client.dicom_files import make_dicom
from gateway.dicomweb import backfill, main as backfill_main
from gateway.results import Triaged
from gateway.service import Gateway, GatewayConfig
from gateway.spool import Spool
from cxr.labels import LABELS
from ops.ports import free_port
from tests.gateway.pacs import Orthanc

pytestmark = pytest.mark.slow


@pytest.fixture
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc", "CXRGW", free_port())
    yield pacs
    pacs.stop()


def _instance(seed: int, study_date: str = "20261120", modality: str = "CR") -> bytes:
    pixels = np.random.default_rng(seed).random((200, 180)).astype(np.float32)
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels, modality=modality)))
    ds.StudyDate = study_date
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_results_are_stored_by_stow_rs(orthanc, tmp_path, monkeypatch):
    result = Triaged(label="normal", probabilities={k: (None if k == "tb" else 0.25) for k in LABELS},
                     triage={"priority": "routine", "reasons": [], "thresholds_version": "t"}, lung_fraction=0.3,
                     lung_mask=np.pad(np.ones((128, 128), np.uint8), 64), cam=np.zeros((len(LABELS), 8, 8), np.float32),
                     model_versions={}, request_id="req")
    gateway = Gateway(GatewayConfig("CXRGW", 0, "localhost:1", None, tmp_path / "spool", stow=orthanc.dicomweb))
    monkeypatch.setattr(gateway, "_triage", lambda data, priority=0: (result, None, "req"))
    data = _instance(0)
    gateway.spool.accept(data, str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID))
    record = gateway.process(gateway.spool.claim())
    assert record["outcome"] == "result"
    stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.instances()}
    assert stored == {o["sop_instance"] for o in record["objects"]}  # SR + SEG + SC, by STOW-RS alone


def test_backfill_spools_exactly_the_matching_studies_not_yet_done(orthanc, tmp_path, capsys):
    wanted = [_instance(1, "20261120"), _instance(2, "20261125", "DX")]
    others = [_instance(3, "20261001"), _instance(4, "20261121", "CT")]  # too old; not CR/DX
    for data in wanted + others:
        orthanc.upload(data)
    uids = [str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in wanted]
    spool = Spool(tmp_path / "spool")
    counts = backfill(orthanc.dicomweb, spool, since=date(2026, 11, 15))
    assert (counts.found, counts.queued, counts.skipped) == (2, 2, 0)
    queued = sorted(Spool.uid_of(p) for p in spool.incoming.glob("*.dcm"))
    assert queued == sorted(uids) and all(p.name.startswith("2-") for p in spool.incoming.glob("*.dcm"))  # LOW
    first = spool.claim()
    spool.complete(first, {"outcome": "result"})  # one of them triaged meanwhile
    again = backfill(orthanc.dicomweb, spool, since=date(2026, 11, 15))
    assert (again.found, again.queued, again.skipped) == (2, 0, 2)  # nothing done or pending twice
    assert backfill_main(["--dicomweb", orthanc.dicomweb, "--spool", str(tmp_path / "spool"), "--since", "2026-11-15"]) == 0
    assert "2 instances found, 0 queued for triage, 2 already done or pending" in capsys.readouterr().out
    assert backfill_main(["--dicomweb", "http://127.0.0.1:1/dicom-web", "--spool", str(tmp_path / "s"),
                          "--since", "2026-11-15"]) == 2  # unreachable archive: one line, exit 2
