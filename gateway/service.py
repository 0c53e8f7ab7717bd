"""The DICOM gateway between a PACS and Triton: Storage SCP in, spool, workers, result packages out.

    cxr gateway --ae-title CXRGW --port 11112 --triton localhost:8001 \\
        --destination ORTHANC@127.0.0.1:4242 --spool /var/spool/cxr [--allow-ae ORTHANC ...]

- C-ECHO and C-STORE from the allowed calling AE titles only (others are rejected at association), in any
  transfer syntax (what the server cannot decode gets an "AI result unavailable" SR naming the syntax).
- Each instance is in the spool (fsynced) before C-STORE success is returned; a full disk answers
  0xA700 "out of resources" instead of accepting and dropping.
- Workers take the most urgent instance first (the more urgent of DICOM Priority and Requested Procedure
  Priority: HIGH/STAT, then MEDIUM/ROUTINE, LOW; one waiting longer than ``max_wait_s`` counts as HIGH and is
  sent to Triton at request priority 1 like the HIGH ones), skip what is not a
  CR/DX chest frontal view (with a logged reason), triage it over gRPC and C-STORE the result package
  (SR + SEG + Secondary Capture, or an "AI result unavailable" SR) to the destination.
- Logs name instances by a short hash of the SOP Instance UID, never patient attributes.
"""
from __future__ import annotations

import hashlib
import io
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from client.grpc_client import TriageClient, is_transient
from cxr.acceptance import tag_refusal
from cxr.pixels import decode_image
from cxr.specs import ENSEMBLE_OUTPUTS
from gateway.dicomweb import stow
from gateway.outbox import Deliverer, Destinations, Outbox
from gateway.results import Triaged, package
from gateway.spool import PRIORITY_NAME, Spool
from gateway.web import create_app
from gateway.worklist import fhir_bundle, hl7_oru, message_id, webhook

log = logging.getLogger("cxr.gateway")

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
def ref(uid: str) -> str:
    """How logs name an instance: a short hash, so log lines carry no identifiers."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def requested_procedure_priority(data: bytes) -> str | None:
    """Requested Procedure Priority (0040,1003) of an encoded instance, top level or in its Request Attributes
    Sequence; None when absent or unreadable (the DIMSE priority then decides alone)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["RequestedProcedurePriority", "RequestAttributesSequence"])
        values = [ds.get("RequestedProcedurePriority"),
                  *(item.get("RequestedProcedurePriority") for item in ds.get("RequestAttributesSequence", []))]
    except Exception:  # a malformed header is the decoder's to report, not the door's
        return None
    return next((str(v) for v in values if v), None)


def parse_destination(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` -> ``(aet, host, port)``."""
    try:
        aet, address = text.split("@", 1)
        host, port = address.rsplit(":", 1)
        return aet, host, int(port)
    except ValueError:
        raise ValueError(f"destination must be AET@HOST:PORT, got {text!r}") from None


@dataclass(frozen=True)
class DicomTLS:
    """DICOM over TLS (PS3.15 Annex B, the "Basic TLS Secure Transport Connection Profile").

    ``certificate``/``key``: this AE's PEM pair (served to callers; shown to the destination when it asks).
    ``ca``: PEM CA that signs the peers' certificates. ``mutual``: callers must present a certificate signed by
    ``ca``. ``scp``/``scu``: TLS on the listening port / on the connection to the destination.
    """

    certificate: Path
    key: Path
    ca: Path | None = None
    mutual: bool = False
    scp: bool = True
    scu: bool = False

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca) if self.ca else None)
        context.load_cert_chain(str(self.certificate), str(self.key))
        context.verify_mode = ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        context.load_cert_chain(str(self.certificate), str(self.key))
        return context


@dataclass
class GatewayConfig:
    ae_title: str
    port: int
    triton: str
    destination: str | None  # AET@HOST:PORT for C-STORE of the results (None: STOW-RS only)
    spool: Path
    allow_ae: tuple[str, ...] = ()
    workers: int = 2
    retry_s: float = 300.0  # how long a worker waits out an unreachable Triton before reporting "unavailable"
    max_attempts: int = 3  # an instance whose processing raised this often is kept in spool/failed/
    retry_wait_s: float = 2.0  # pause after a failed attempt
    max_wait_s: float | None = 900.0  # a study queued longer goes first, at high priority (None: never escalate)
    worklist: Destinations = field(default_factory=Destinations)  # HL7 / FHIR / webhook (all off by default)
    tls: DicomTLS | None = None  # DICOM TLS on the SCP and/or towards the destination
    stow: str | None = None  # DICOMweb base URL: results also (or only) stored by STOW-RS
    host: str = "0.0.0.0"


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter("cxr_gateway_received", "Instances accepted into the spool", registry=r)
        self.escalated = Counter("cxr_gateway_escalated", "Instances taken first because they waited longer than "
                                 "max_wait_s", registry=r)
        self.duplicates = Counter("cxr_gateway_duplicates", "Resent instances acknowledged, not queued", registry=r)
        self.processed = Counter("cxr_gateway_processed", "Instances finished", ["outcome"], registry=r)
        self.failed = Counter("cxr_gateway_failed", "Failures (send or store), retried", ["stage"], registry=r)
        self.spool_depth = Gauge("cxr_gateway_spool_depth", "Instances waiting or in progress", registry=r)
        self.worklist = Counter("cxr_gateway_worklist", "Worklist message attempts (HL7, FHIR, webhook)",
                                ["channel", "outcome"], registry=r)
        self.outbox_depth = Gauge("cxr_gateway_outbox_depth", "Worklist messages not yet acknowledged", registry=r)
        self.turnaround = Histogram("cxr_gateway_turnaround_seconds", "C-STORE received -> result stored",
                                    ["priority"], registry=r,
                                    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))


class Gateway:
    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool, config.max_wait_s)
        self.metrics = metrics or GatewayMetrics()
        self.metrics.spool_depth.set_function(self.spool.depth)
        self.outbox = Outbox(Path(config.spool) / "outbox")
        self.metrics.outbox_depth.set_function(self.outbox.depth)
        self.deliverer = Deliverer(self.outbox, config.worklist, on_result=lambda channel, ok: self.metrics.worklist.labels(
            channel, "delivered" if ok else "retry").inc())
        if not config.destination and not config.stow:
            raise ValueError("the gateway needs a destination for its results: a C-STORE destination or a STOW-RS URL")
        self.destination = parse_destination(config.destination) if config.destination else None
        self.client = TriageClient(config.triton, outputs=tuple(t.name for t in ENSEMBLE_OUTPUTS))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._attempts: dict[str, int] = {}  # SOP Instance UID -> failed processing attempts

    # -- Storage SCP -------------------------------------------------------------------------
    def _on_store(self, event) -> int | Dataset:
        try:
            uid = str(event.request.AffectedSOPInstanceUID)
            data = event.encoded_dataset()
            priority = int(getattr(event.request, "Priority", 0) or 0)
            procedure_priority = requested_procedure_priority(data)
        except Exception as exc:  # a malformed request: refuse it, keep serving
            log.warning("C-STORE refused: cannot read the request (%s)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        try:
            queued = self.spool.accept(data, uid, priority, procedure_priority)
        except OSError as exc:
            self.metrics.failed.labels("spool").inc()
            log.error("C-STORE %s refused: spool write failed (%s)", ref(uid), exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        except ValueError as exc:
            log.warning("C-STORE refused: %s", exc)
            return CANNOT_UNDERSTAND
        if queued:
            self.metrics.received.inc()
            self._wake.set()
            log.info("received %s (priority %s, requested procedure priority %s)", ref(uid), priority, procedure_priority)
        else:
            self.metrics.duplicates.inc()
            log.info("received %s again: already spooled or done, not queued twice", ref(uid))
        return 0x0000

    def start(self) -> "Gateway":
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:  # every transfer syntax: PACS often send JPEG lossless
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allow_ae:
            ae.require_calling_aet = list(self.config.allow_ae)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        tls = self.config.tls
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers,
                                       ssl_context=tls.server_context() if tls and tls.scp else None)
        if self.config.worklist.enabled():
            self.deliverer.start()
        for i in range(self.config.workers):
            thread = threading.Thread(target=self._work, name=f"cxr-gateway-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("gateway %s listening on %s:%d, %d pending in spool", self.config.ae_title, self.config.host,
                 self.config.port, self.spool.depth())
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=60)
        self.deliverer.stop()
        self.client.close()

    # -- Workers -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            path = self.spool.claim()
            if path is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.process(path)
            except Exception as exc:  # keep the worker alive; the instance is retried, then kept aside
                self._failed_attempt(path, exc)

    def _failed_attempt(self, path: Path, exc: Exception) -> None:
        uid = Spool.uid_of(path)
        attempts = self._attempts[uid] = self._attempts.get(uid, 0) + 1
        self.metrics.failed.labels("process").inc()
        if attempts >= self.config.max_attempts:
            reason = f"processing failed {attempts} times: {type(exc).__name__}: {exc}"
            log.error("%s kept in spool/failed/ for a person: %s", ref(uid), type(exc).__name__)
            self.spool.quarantine(path, {"outcome": "failed", "reason": reason})
            self.metrics.processed.labels("failed").inc()
            self._attempts.pop(uid, None)
            return
        log.warning("processing %s failed (%s); will retry", ref(uid), type(exc).__name__)
        self.spool.release(path)
        self._stop.wait(self.config.retry_wait_s)

    def process(self, path: Path) -> dict:
        """Triage one spooled instance and store its result package; returns the outcome record."""
        uid = Spool.uid_of(path)
        data = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        reason = tag_refusal(ds)  # the same rule as the ensemble's preprocess step
        if reason is not None:
            log.info("skipped %s: %s", ref(uid), reason)
            record = {"outcome": "skipped", "reason": reason}
            self.spool.complete(path, record)
            self.metrics.processed.labels("skipped").inc()
            return record
        escalated = self.spool.escalated(path)
        if escalated:
            self.metrics.escalated.inc()
        urgent = escalated or Spool.rank_of(path) == 0  # DICOM or procedure priority high, or waited too long
        result, error, request_id = self._triage(data, priority=1 if urgent else 0)
        gray = None
        if result is not None:
            gray = decode_image(data).pixels
        try:
            objects = package(ds, gray, result, error, request_id)
        except (AttributeError, ValueError, TypeError) as exc:  # a malformed attribute the result objects copy:
            # the "unavailable" SR still goes out, naming why, so the study does not silently fall out of triage
            result, error = None, f"result could not be built from this DICOM: {type(exc).__name__}: {exc}"
            objects = package(ds, None, None, error, request_id)
        if not self._send(objects, uid):
            self.spool.release(path)
            self._stop.wait(2.0)
            return {"outcome": "retry"}
        outcome = "result" if result is not None else "unavailable"
        record = {"outcome": outcome, "reason": error, "request_id": request_id,
                  "objects": [{"sop_class": str(o.SOPClassUID), "sop_instance": str(o.SOPInstanceUID)} for o in objects]}
        if result is not None:
            record.update(label=result.label, priority=result.triage["priority"])
            record["worklist"] = self._queue_worklist(ds, result)
        received_ns = int(path.name.split("-", 2)[1])
        self.metrics.turnaround.labels(PRIORITY_NAME[Spool.rank_of(path)]).observe((time.time_ns() - received_ns) / 1e9)
        self.spool.complete(path, record)
        self.metrics.processed.labels(outcome).inc()
        log.info("%s %s: %s", outcome, ref(uid), record.get("priority") or error)
        return record

    def _queue_worklist(self, ds: Dataset, result: Triaged) -> list[str]:
        """Queue the result's worklist messages durably (before the outcome is recorded, so a crash in between
        queues them again, under the same ids); the deliverer sends them. Returns the channels queued."""
        messages = {"hl7": lambda: hl7_oru(ds, result, sending_facility=self.config.ae_title),
                    "fhir": lambda: fhir_bundle(ds, result),
                    "webhook": lambda: webhook(ds, result) if result.triage["priority"] == "urgent" else None}
        queued = []
        for channel in self.config.worklist.enabled():
            try:
                payload = messages[channel]()
            except Exception as exc:  # a message this study cannot make must not hold back its DICOM result
                log.error("%s message for %s not built: %s", channel, ref(str(ds.SOPInstanceUID)), type(exc).__name__)
                self.metrics.worklist.labels(channel, "not_built").inc()
                continue
            if payload is not None:
                self.outbox.put(channel, message_id(ds, channel), payload)
                queued.append(channel)
        if queued:
            self.deliverer.wake()
        return queued

    def _triage(self, data: bytes, priority: int = 0) -> tuple[Triaged | None, str | None, str]:
        """Call the ensemble (Triton request ``priority``), waiting out an unreachable server for up to ``retry_s``."""
        deadline = time.monotonic() + self.config.retry_s
        delay = 0.5
        while True:
            out = self.client.triage(data, priority=priority)
            if out.error is None:
                return Triaged.from_output(out), None, out.request_id
            # the client already retried briefly; a restarting server or a timeout is waited out here
            transient = is_transient(out.error) or "DEADLINE_EXCEEDED" in out.error
            if not transient or time.monotonic() > deadline or self._stop.is_set():
                return None, out.error if not transient else f"inference unavailable: {out.error}", out.request_id
            self.metrics.failed.labels("triton").inc()
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _send(self, objects: list[Dataset], uid: str) -> bool:
        """Store the result objects where configured (C-STORE, STOW-RS or both); False: retry later."""
        if self.destination is not None and not self._c_store(objects, uid):
            return False
        if self.config.stow:
            try:
                stow(self.config.stow, objects)
            except Exception as exc:  # unreachable, refused, partial failure: the study is retried, never lost
                self.metrics.failed.labels("send").inc()
                log.warning("result for %s not stored by STOW-RS (%s); will retry", ref(uid), type(exc).__name__)
                return False
        return True

    def _c_store(self, objects: list[Dataset], uid: str) -> bool:
        aet, host, port = self.destination
        ae = AE(ae_title=self.config.ae_title)
        for sop_class in {str(o.SOPClassUID) for o in objects}:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        tls = self.config.tls
        assoc = ae.associate(host, port, ae_title=aet,
                             tls_args=(tls.client_context(), host) if tls and tls.scu else None)
        if not assoc.is_established:
            self.metrics.failed.labels("send").inc()
            log.warning("result for %s not sent: %s@%s:%d unreachable; will retry", ref(uid), aet, host, port)
            return False
        try:
            for obj in objects:
                status = assoc.send_c_store(obj)
                code = getattr(status, "Status", None)
                if code is None or (code != 0x0000 and code >> 12 != 0xB):
                    self.metrics.failed.labels("send").inc()
                    log.warning("result for %s refused by %s (status %s); will retry", ref(uid), aet,
                                hex(code) if code is not None else "none")
                    return False
        finally:
            assoc.release()
        return True


def run(config: GatewayConfig, metrics_port: int | None = None, web_port: int | None = None) -> int:
    """Run the gateway in the foreground until SIGINT/SIGTERM.

    ``metrics_port`` serves Prometheus metrics alone; ``web_port`` serves the upload page (with
    ``/metrics`` too).
    """
    import signal

    from prometheus_client import start_http_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("highdicom", "pynetdicom"):  # their INFO lines name instances and datasets
        logging.getLogger(chatty).setLevel(logging.WARNING)
    gateway = Gateway(config)
    if metrics_port:
        start_http_server(metrics_port, registry=gateway.metrics.registry)
    if web_port:
        from werkzeug.serving import make_server


        web = make_server(config.host, web_port, create_app(config.triton, gateway.metrics.registry), threaded=True)
        threading.Thread(target=web.serve_forever, name="cxr-gateway-web", daemon=True).start()
        log.info("upload page on http://%s:%d/", config.host, web_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gateway.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0
