"""Gateway fixtures: a real Orthanc PACS and the gateway between it and the session's Triton server."""
from __future__ import annotations

import io
import threading
import time

import pydicom
import pytest

from gateway.service import Gateway, GatewayConfig
from ops.ports import free_port
from tests.gateway.pacs import Orthanc

GATEWAY_AET = "CXRGW"
SCU_AET = "MODALITY"  # what the tests' own pynetdicom SCU calls itself


def results_by_class(orthanc: Orthanc, exclude: set[str]) -> dict[str, list[pydicom.Dataset]]:
    """Everything in Orthanc except ``exclude`` (SOP Instance UIDs), by SOP class."""
    out: dict[str, list] = {}
    for instance in orthanc.instances():
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(instance)))
        if ds.SOPInstanceUID not in exclude:
            out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def wait_until(predicate, timeout_s: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def c_store(port: int, datasets: list[pydicom.Dataset], aet: str = SCU_AET) -> list[int]:
    """Send datasets to the gateway in one association, each in its own transfer syntax; the statuses."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    for context in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
    assert assoc.is_established, "the gateway refused the association"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture
def pacs_and_gateway(triton, tmp_path):
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", GATEWAY_AET, port)
    config = GatewayConfig(GATEWAY_AET, port, triton.grpc_url, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                           tmp_path / "spool", allow_ae=(orthanc.aet, "STORESCU", "ECHOSCU", SCU_AET), host="127.0.0.1")
    gateway = Gateway(config).start()
    yield orthanc, gateway
    gateway.stop()
    orthanc.stop()


class StudiesUnderLoad:
    """A gateway whose results go to a real Orthanc and a modality C-STOREing ``datasets`` to it in bursts of four
    (in a thread, while the test breaks something); then whether each study got exactly one SR.

    The first burst goes out at :meth:`start`, which returns once its first results are in; the rest, 1.5 s
    apart, only after the test calls :meth:`go_on` (it has broken what it breaks), so some studies always arrive
    after the break, however fast the pipeline answered the first ones.
    """

    def __init__(self, tmp_path, triton_url: str, datasets: list[pydicom.Dataset]) -> None:
        self.port = free_port()
        self.orthanc = Orthanc(tmp_path / "orthanc", GATEWAY_AET, self.port)
        config = GatewayConfig(GATEWAY_AET, self.port, triton_url, f"{self.orthanc.aet}@127.0.0.1:{self.orthanc.dicom_port}",
                               tmp_path / "spool", allow_ae=(SCU_AET,), host="127.0.0.1")
        self.gateway = Gateway(config).start()
        self.datasets, self.uids = datasets, [ds.SOPInstanceUID for ds in datasets]
        self.statuses: list[int] = []
        self.sender = threading.Thread(target=self._send)
        self._go_on = threading.Event()

    def _send(self) -> None:
        for i in range(0, len(self.datasets), 4):
            if i:
                self._go_on.wait()
                time.sleep(1.5)
            self.statuses.extend(c_store(self.port, self.datasets[i : i + 4]))

    def start(self) -> "StudiesUnderLoad":
        self.sender.start()
        wait_until(lambda: len(list(self.gateway.spool.done.glob("*.json"))) >= 2, what="the first results")
        return self

    def go_on(self) -> None:
        """The test has broken what it breaks: the modality sends the rest of the studies."""
        self._go_on.set()

    def finish(self) -> tuple[list[dict], list[str]]:
        """Wait for every study; returns the spool's records and the image UID each SR in Orthanc refers to."""
        from pydicom.uid import Comprehensive3DSRStorage

        from gateway.results import read_sr

        self.go_on()
        self.sender.join()
        wait_until(lambda: all(self.gateway.spool.record(u) for u in self.uids), timeout_s=300, what="every instance handled")
        records = [self.gateway.spool.record(u) for u in self.uids]
        srs = results_by_class(self.orthanc, set(self.uids)).get(Comprehensive3DSRStorage, [])
        return records, sorted(read_sr(s)["image"] for s in srs)

    def stop(self) -> None:
        self.go_on()  # a test that failed before its break must not leave the modality waiting
        self.gateway.stop()
        self.orthanc.stop()
