"""The gateway against real peers: Orthanc (PACS), dcmtk's echoscu/storescu, and the real Triton server."""
from __future__ import annotations

import inspect
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from client.dicom_files import make_dicom
from client.grpc_client import TriageClient
from gateway.results import read_sr
from gateway.service import Gateway, GatewayConfig
from cxr.pixels import decode_image
from ops.ports import free_port
from tests.gateway.conftest import GATEWAY_AET, results_by_class, wait_until
from tests.gateway.pacs import Orthanc


def _dcmtk(tool: str) -> str | None:
    """dcmtk's ``tool``: in an activated venv pynetdicom's console script of the same name (other options) comes
    first on PATH."""
    venv_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin)
    return shutil.which(tool, path=path)


ECHOSCU, STORESCU = _dcmtk("echoscu"), _dcmtk("storescu")

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _cr(row, **kwargs) -> bytes:
    return make_dicom(decode_image(row.image.read_bytes()).pixels, **kwargs)


def test_orthanc_sends_a_cr_and_gets_sr_seg_and_sc_back(pacs_and_gateway, test_rows):
    orthanc, gateway = pacs_and_gateway
    row = next(r for r in test_rows if r.mask is not None)
    data = _cr(row)
    source = pydicom.dcmread(io.BytesIO(data))
    orthanc.send_to_gateway(orthanc.upload(data))
    orthanc.wait_for(4)
    results = results_by_class(orthanc, {source.SOPInstanceUID})
    assert sorted(results) == sorted([Comprehensive3DSRStorage, SegmentationStorage, SecondaryCaptureImageStorage])
    assert all(len(v) == 1 for v in results.values())

    sr = results[Comprehensive3DSRStorage][0]
    read = read_sr(sr)
    assert read["image"] == source.SOPInstanceUID and sr.StudyInstanceUID == source.StudyInstanceUID
    assert read["status"] == "completed" and read["priority"] in ("urgent", "expedited", "routine")
    assert read["segmentation"] == results[SegmentationStorage][0].SOPInstanceUID

    seg = hd.seg.Segmentation.from_dataset(results[SegmentationStorage][0])
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert 0.1 < seg.pixel_array.mean() < 0.8  # lungs, not nothing and not everything

    sc = results[SecondaryCaptureImageStorage][0]
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.pixel_array.shape == (source.Rows, source.Columns, 3)

    record = gateway.spool.record(source.SOPInstanceUID)
    assert record["outcome"] == "result" and len(record["objects"]) == 3
    metric = gateway.metrics.registry.get_sample_value
    assert metric("cxr_gateway_received_total") == 1 and metric("cxr_gateway_spool_depth") == 0
    assert metric("cxr_gateway_processed_total", {"outcome": "result"}) == 1
    assert metric("cxr_gateway_turnaround_seconds_count", {"priority": "medium"}) == 1

    # a resend of the same instance is acknowledged and produces no second package
    orthanc.send_to_gateway(orthanc.upload(data))
    time.sleep(3)
    assert len(orthanc.instances()) == 4
    assert gateway.metrics.registry.get_sample_value("cxr_gateway_duplicates_total") == 1


def test_orthanc_sends_a_cr_and_gets_the_results_back_by_stow_rs(triton, test_rows, tmp_path):
    """The DICOMweb-only archive: C-STORE in from Orthanc, results back by STOW-RS alone (no C-STORE destination)."""
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", GATEWAY_AET, port)
    gateway = Gateway(GatewayConfig(GATEWAY_AET, port, triton.grpc_url, None, tmp_path / "spool",
                                    allow_ae=(orthanc.aet,), host="127.0.0.1", stow=orthanc.dicomweb)).start()
    try:
        data = _cr(next(r for r in test_rows if r.mask is not None))
        source = pydicom.dcmread(io.BytesIO(data))
        orthanc.send_to_gateway(orthanc.upload(data))
        found = orthanc.wait_for(4)
        results = results_by_class(orthanc, {source.SOPInstanceUID})
    finally:
        gateway.stop()
        orthanc.stop()
    assert len(found) == 4 and sorted(results) == sorted([Comprehensive3DSRStorage, SegmentationStorage,
                                                           SecondaryCaptureImageStorage])
    assert read_sr(results[Comprehensive3DSRStorage][0])["image"] == source.SOPInstanceUID


def test_non_chest_and_unreadable_studies_get_no_false_result(pacs_and_gateway, test_rows):
    orthanc, gateway = pacs_and_gateway
    ct = make_dicom(decode_image(test_rows[0].image.read_bytes()).pixels, modality="CT")
    ct_uid = pydicom.dcmread(io.BytesIO(ct)).SOPInstanceUID
    orthanc.send_to_gateway(orthanc.upload(ct))
    wait_until(lambda: gateway.spool.record(ct_uid) is not None, what="the CT to be handled")
    assert gateway.spool.record(ct_uid)["outcome"] == "skipped" and "CT" in gateway.spool.record(ct_uid)["reason"]

    # A CR whose pixels the server cannot decode: the PACS gets an "AI result unavailable" SR, not silence.
    broken = pydicom.dcmread(io.BytesIO(_cr(test_rows[1])))
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    orthanc.send_to_gateway(orthanc.upload(buffer.getvalue()))
    wait_until(lambda: gateway.spool.record(broken.SOPInstanceUID) is not None, what="the broken CR to be handled")
    record = gateway.spool.record(broken.SOPInstanceUID)
    assert record["outcome"] == "unavailable" and "bad image" in record["reason"]
    srs = results_by_class(orthanc, {ct_uid, broken.SOPInstanceUID}).get(Comprehensive3DSRStorage, [])
    assert len(srs) == 1
    assert read_sr(srs[0])["error"].startswith("AI result unavailable: ")


@pytest.mark.skipif(ECHOSCU is None, reason="dcmtk not installed")
def test_dcmtk_echo_and_store_and_the_allow_list(pacs_and_gateway, test_rows, tmp_path):
    _, gateway = pacs_and_gateway
    port = str(gateway.config.port)
    ok = subprocess.run([ECHOSCU, "-aet", "ECHOSCU", "-aec", GATEWAY_AET, "127.0.0.1", port], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([ECHOSCU, "-aet", "INTRUDER", "-aec", GATEWAY_AET, "127.0.0.1", port],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()

    path = tmp_path / "cr.dcm"
    path.write_bytes(_cr(test_rows[2]))
    uid = pydicom.dcmread(path).SOPInstanceUID
    stored = subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", GATEWAY_AET, "127.0.0.1", port, str(path)],
                            capture_output=True, text=True)
    assert stored.returncode == 0, stored.stderr
    wait_until(lambda: gateway.spool.record(uid) is not None, what="the storescu image to be triaged")
    assert gateway.spool.record(uid)["outcome"] == "result"
    intruder = subprocess.run([STORESCU, "-aet", "INTRUDER", "-aec", GATEWAY_AET, "127.0.0.1", port, str(path)],
                              capture_output=True, text=True)
    assert intruder.returncode != 0


@pytest.mark.skipif(STORESCU is None, reason="dcmtk not installed")
def test_killed_mid_batch_then_restarted_every_image_gets_exactly_one_package(triton, test_rows, tmp_path):
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", GATEWAY_AET, port)
    spool = tmp_path / "spool"
    command = [sys.executable, "-m", "cli.main", "gateway", "--ae-title", GATEWAY_AET, "--port", str(port),
               "--triton", triton.grpc_url, "--destination", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
               "--spool", str(spool), "--allow-ae", "STORESCU", "--metrics-port", "0", "--workers", "1"]
    files = tmp_path / "batch"
    files.mkdir()
    uids = set()
    for i, row in enumerate(test_rows[:8]):
        data = _cr(row)
        uids.add(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        (files / f"{i}.dcm").write_bytes(data)
    log = (tmp_path / "gateway.log").open("ab")
    try:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(port)
        stored = subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", GATEWAY_AET, "127.0.0.1", str(port),
                                 "--scan-directories", str(files)], capture_output=True, text=True)
        assert stored.returncode == 0, stored.stderr
        os.killpg(first.pid, signal.SIGKILL)  # mid-batch: at most one or two of the eight are done
        first.wait()
        done_before = len(list((spool / "done").glob("*.json")))
        assert done_before < len(uids), "the kill came too late to test recovery"

        second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: len(list((spool / "done").glob("*.json"))) == len(uids), timeout_s=300,
                  what="every accepted image to be processed after the restart")
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(30)
        results = results_by_class(orthanc, set())
        srs = results[Comprehensive3DSRStorage]
        referenced = [read_sr(s)["image"] for s in srs]
        assert sorted(referenced) == sorted(uids)  # exactly one SR per accepted image
        assert len(results[SegmentationStorage]) == len(uids) == len(results[SecondaryCaptureImageStorage])
    finally:
        log.close()
    text = (tmp_path / "gateway.log").read_text()
    assert "received" in text and "result" in text
    for phi in ("Demo^Anonymous", "ANON0001", *uids):  # patient name and ID (see make_dicom), instance UIDs
        assert phi not in text, "the gateway log must not carry patient identifiers"
        orthanc.stop()


def _wait_port(port: int, timeout_s: float = 60.0) -> None:
    import socket

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout_s, f"the gateway on port {port}")


def test_triton_killed_and_restarted_under_gateway_load_loses_nothing(repository, test_rows, tmp_path):
    """Instances keep arriving while Triton is down; afterwards each accepted one has exactly one result."""
    from ops.server import TritonServer
    from tests.conftest import write_artifact
    from tests.gateway.conftest import StudiesUnderLoad

    ports = (free_port(), free_port(), free_port())
    server = TritonServer(repository, *ports, log_path=tmp_path / "triton-1.log").start(timeout_s=240)
    load = StudiesUnderLoad(tmp_path, server.grpc_url, [pydicom.dcmread(io.BytesIO(_cr(row))) for row in test_rows[:16]])
    try:
        load.start()
        os.killpg(server.process.pid, signal.SIGKILL)  # Triton and its stubs, mid-stream
        server.process.wait()
        killed_at = time.monotonic()
        load.go_on()  # the rest of the studies arrive while Triton is down
        # down for longer than the gateway's client retries on its own (5 retries from 0.25 s, doubling: 7.75 s),
        # so the gateway's own waiting is what carries the studies over (a fast host restarts Triton in ~3 s)
        client = inspect.signature(TriageClient).parameters
        time.sleep(client["backoff_s"].default * (2 ** client["retries"].default - 1) + 2)
        server = TritonServer(repository, *ports, log_path=tmp_path / "triton-2.log").start(timeout_s=240)
        outage_s = time.monotonic() - killed_at
        records, referenced = load.finish()
    finally:
        load.stop()
        server.stop()
    triton_failures = load.gateway.metrics.registry.get_sample_value("cxr_gateway_failed_total", {"stage": "triton"}) or 0
    write_artifact("fault_triton_restart", {
        "accepted": load.statuses.count(0), "results": sum(r["outcome"] == "result" for r in records),
        "unavailable": sum(r["outcome"] == "unavailable" for r in records), "lost": len(set(load.uids) - set(referenced)),
        "duplicates": len(referenced) - len(set(referenced)), "outage_s": round(outage_s, 1),
        "gateway_waits_on_triton": triton_failures,
    })
    assert load.statuses == [0x0000] * len(load.datasets)
    assert [r["outcome"] for r in records] == ["result"] * len(load.uids)
    assert referenced == sorted(load.uids)  # exactly one SR per accepted instance: none lost, none twice
    assert triton_failures >= 1, "the gateway never saw the outage: the kill came too late"
