"""Results onto the worklist: HL7 ORU^R01 over MLLP and FHIR / webhook over HTTP, received by real listeners
in-process, delivered durably (retried while a receiver is down, kept across a restart, never queued twice)."""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hl7
import hl7.mllp
import numpy as np
import pydicom
import pytest

from client.dicom_files import make_dicom
from gateway.outbox import Destinations
from gateway.results import Triaged
from gateway.service import Gateway, GatewayConfig
from gateway.worklist import fhir_bundle, hl7_oru, message_id, validate_fhir
from cxr.labels import LABELS
from ops.ports import free_port
from tests.gateway.conftest import wait_until


def _result(priority: str = "urgent", label: str = "viral") -> Triaged:
    return Triaged(label=label, probabilities={k: (None if k == "tb" else 0.2) for k in LABELS},
                   triage={"priority": priority, "reasons": ["viral 0.81 >= 0.50 | odd"], "thresholds_version": "t1"},
                   lung_fraction=0.3, lung_mask=np.pad(np.ones((128, 128), np.uint8), 64),
                   cam=np.zeros((len(LABELS), 8, 8), np.float32), model_versions={"cxr_classifier": "1"}, request_id="req")


def _source(accession: str = "ACC1", seed: int = 0) -> pydicom.Dataset:
    """A study (new UIDs each call) whose pixels ``seed`` chooses."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.random.default_rng(seed).random((300, 240)).astype(np.float32))))
    ds.AccessionNumber = accession
    return ds


def test_oru_r01_carries_priority_finding_and_trained_probabilities():
    source = _source()
    text = hl7_oru(source, _result())
    message = hl7.parse(text)
    msh, pid, obr = message.segment("MSH"), message.segment("PID"), message.segment("OBR")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1"
    assert str(msh[10]) == message_id(source, "hl7") and len(str(msh[10])) <= 20  # MSH-10: at most 20 in v2.5.1
    assert hl7_oru(source, _result()).split("\r")[0].split("|")[9] == str(msh[10])  # the same id every time
    assert str(pid[3]) == "ANON0001" and str(pid[5]) == "Demo^Anonymous"
    assert str(obr[2]) == "ACC1" and str(obr[3][0][0]) == str(source.StudyInstanceUID)
    assert str(obr[5]) == "S" and str(obr[27][0][5]) == "S" and str(obr[25]) == "P"  # stat, preliminary
    obx = message.segments("OBX")
    assert str(obx[0][5]) == "75570004^Viral pneumonia^SCT" and str(obx[1][5]) == "urgent"
    probabilities = {str(o[4]): float(str(o[5])) for o in obx if str(o[2]) == "NM"}
    assert probabilities == {"normal": 0.2, "bacterial": 0.2, "viral": 0.2, "covid": 0.2}  # no untrained tb
    assert hl7.parse(text).segments("OBX")[-1][5][0] == "viral 0.81 >= 0.50 \\F\\ odd"  # '|' escaped, not a field


def test_fhir_bundle_is_valid_and_links_the_observations():
    from pydantic import ValidationError

    bundle = fhir_bundle(_source(), _result(priority="expedited", label="bacterial"))  # validated while built
    report = bundle["entry"][-1]["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["conclusionCode"][0]["coding"][0]["code"] == "53084003"
    assert [r["reference"] for r in report["result"]] == [e["fullUrl"] for e in bundle["entry"][:-1]]
    assert len(bundle["entry"]) == 1 + 1 + 4  # priority + four trained probabilities + the report
    assert all(e["request"]["ifNoneExist"].startswith("identifier=") for e in bundle["entry"])
    del report["code"]  # fhir.resources checks structure and types (not value-set membership)
    with pytest.raises(ValidationError, match="code"):
        validate_fhir(bundle)


class MLLPListener:
    """A real HL7 MLLP listener (python-hl7's asyncio server) that acknowledges every message with AA."""

    def __init__(self, port: int) -> None:
        self.port, self.messages = port, []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    async def _handle(self, reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.messages.append(str(message))
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def _serve(self):
        self.server = await hl7.mllp.start_hl7_server(self._handle, host="127.0.0.1", port=self.port)
        self._ready.set()
        try:
            async with self.server:
                await self.server.serve_forever()
        except asyncio.CancelledError:  # closed by __exit__
            pass

    def __enter__(self):
        threading.Thread(target=lambda: self.loop.run_until_complete(self._serve()), daemon=True).start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)


class HTTPListener:
    """A real HTTP server recording every POSTed JSON body by path."""

    def __init__(self, port: int) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _gateway(tmp_path, monkeypatch, hl7_port, http_port) -> Gateway:
    worklist = Destinations(hl7=f"127.0.0.1:{hl7_port}", fhir=f"http://127.0.0.1:{http_port}/fhir",
                            webhook=f"http://127.0.0.1:{http_port}/alert")
    gw = Gateway(GatewayConfig("CXRGW", 0, "localhost:1", "PACS@localhost:1", tmp_path / "spool", worklist=worklist))
    gw.deliverer.backoff_s = 0.2
    monkeypatch.setattr(gw, "_send", lambda objects, uid: True)  # the C-STORE to the PACS (tested elsewhere)
    return gw


def _process(gw: Gateway, monkeypatch, source: pydicom.Dataset, result: Triaged) -> dict:
    monkeypatch.setattr(gw, "_triage", lambda data, priority=0: (result, None, "req"))
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    gw.spool.accept(buffer.getvalue(), str(source.SOPInstanceUID))
    return gw.process(gw.spool.claim())


def test_every_result_reaches_hl7_and_fhir_and_urgent_ones_the_webhook(tmp_path, monkeypatch):
    hl7_port, http_port = free_port(), free_port()
    with MLLPListener(hl7_port) as ris, HTTPListener(http_port) as web:
        gw = _gateway(tmp_path, monkeypatch, hl7_port, http_port)
        gw.deliverer.start()
        try:
            urgent = _process(gw, monkeypatch, _source("A1"), _result("urgent"))
            routine = _process(gw, monkeypatch, _source("A2", seed=1), _result("routine", "normal"))
            wait_until(lambda: gw.outbox.depth() == 0, timeout_s=30, what="the outbox to drain")
        finally:
            gw.deliverer.stop()
    assert urgent["worklist"] == ["hl7", "fhir", "webhook"] and routine["worklist"] == ["hl7", "fhir"]
    assert sorted(str(hl7.parse(m).segment("OBR")[5]) for m in ris.messages) == ["R", "S"]
    fhir = [body for path, kind, body in web.received if path == "/fhir"]
    alerts = [body for path, kind, body in web.received if path == "/alert"]
    assert len(fhir) == 2 and all(kind == "application/fhir+json" for path, kind, _ in web.received if path == "/fhir")
    assert [a["priority"] for a in alerts] == ["urgent"]
    metric = gw.metrics.registry.get_sample_value
    assert metric("cxr_gateway_worklist_total", {"channel": "hl7", "outcome": "delivered"}) == 2
    assert metric("cxr_gateway_outbox_depth") == 0


def test_a_receiver_that_is_down_gets_the_message_once_it_is_up_even_after_a_restart(tmp_path, monkeypatch):
    hl7_port, http_port = free_port(), free_port()
    gw = _gateway(tmp_path, monkeypatch, hl7_port, http_port)
    source = _source()
    record = _process(gw, monkeypatch, source, _result("urgent"))
    assert record["worklist"] == ["hl7", "fhir", "webhook"] and gw.outbox.depth() == 3
    assert gw.deliverer.drain_once() == 0  # nobody listening: kept, to be retried
    assert gw.metrics.registry.get_sample_value("cxr_gateway_worklist_total", {"channel": "hl7", "outcome": "retry"}) == 1
    # the gateway restarts (a new process would find the same spool) before the receivers come up
    again = _gateway(tmp_path, monkeypatch, hl7_port, http_port)
    assert again.outbox.depth() == 3 and not again.outbox.put("hl7", message_id(source, "hl7"), "dup")
    with MLLPListener(hl7_port) as ris, HTTPListener(http_port) as web:
        again.deliverer.start()
        try:
            wait_until(lambda: again.outbox.depth() == 0, timeout_s=30, what="the outbox to drain")
            time.sleep(0.5)  # anything sent twice would have arrived by now
        finally:
            again.deliverer.stop()
    assert len(ris.messages) == 1 and len(web.received) == 2  # each message exactly once
    assert str(hl7.parse(ris.messages[0]).segment("MSH")[10]) == message_id(source, "hl7")


def _queued(outbox, n: int) -> dict[str, bool]:
    queued = {}
    for i in range(n):
        source = _source(f"K{i}")
        source.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{i + 1}"
        queued[message_id(source, "hl7")] = outbox.put("hl7", message_id(source, "hl7"), hl7_oru(source, _result()))
    return queued


def _driver(outbox, port: int, *flags: str) -> subprocess.Popen:
    """The deliverer alone in a process of its own (tests.gateway.outbox_driver), which a test can SIGKILL."""
    return subprocess.Popen([sys.executable, "-m", "tests.gateway.outbox_driver", str(outbox.pending.parent),
                             f"127.0.0.1:{port}", *flags], start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _drain_after_restart(outbox, port: int, *flags: str) -> None:
    """Start the deliverer again and let it empty the outbox (then stop it)."""
    second = _driver(outbox, port, *flags)
    try:
        wait_until(lambda: outbox.depth() == 0, timeout_s=60, what="the restarted deliverer to drain the outbox")
        time.sleep(0.5)
    finally:
        _kill(second)


def test_a_deliverer_killed_mid_delivery_loses_nothing_and_repeats_at_most_the_message_in_flight(tmp_path):
    """SIGKILL while messages are on the wire, restart: every message arrives; the only possible repeat is the one
    whose ACK came back as the process died, and it carries the same control id (MSH-10) for the receiver to drop."""
    from gateway.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    sent = _queued(outbox, 20)
    port = free_port()

    class SlowListener(MLLPListener):  # acknowledges after 0.2 s, so a kill lands while messages are in flight
        async def _handle(self, reader, writer):
            try:
                while not writer.is_closing():
                    message = await reader.readmessage()
                    self.messages.append(str(message))
                    await asyncio.sleep(0.2)
                    writer.writemessage(message.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

    with SlowListener(port) as ris:
        first = _driver(outbox, port)
        wait_until(lambda: len(ris.messages) >= 6, timeout_s=60, what="some messages to arrive")
        _kill(first)
        left = outbox.depth()
        _drain_after_restart(outbox, port)
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in ris.messages]
    assert all(sent.values()) and 0 < left < 20  # the kill came mid-way
    assert set(ids) == set(sent)  # nothing lost
    repeats = len(ids) - len(set(ids))
    assert repeats <= 1  # at most the message whose ACK was in flight when the process died
    assert len(ris.messages) - repeats == 20


class SequencedListener(MLLPListener):
    """The receiving side of HL7's sequence number protocol: stores the number of the last message it accepted
    before acknowledging, answers every message with the number it expects next (MSA-4), takes a message only if
    it is that number, acknowledges a repeat without taking it. Holds each ACK ``hold_s``; ``holding`` is set
    while it holds the ACK of message number ``hold_at`` (so a test can kill the sender with that ACK in flight)."""

    def __init__(self, port: int, hold_s: float = 0.2, hold_at: int | None = None) -> None:
        super().__init__(port)
        self.last, self.repeats, self.hold_s, self.hold_at = 0, 0, hold_s, hold_at
        self.holding = threading.Event()

    async def _handle(self, reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                number = int(str(message.segment("MSH")[13]))
                code = "AA"
                if number == self.last + 1:
                    self.messages.append(str(message))
                    self.last = number
                elif 0 < number <= self.last:
                    self.repeats += 1
                elif number != 0:
                    code = "AR"  # a gap: the sender must start the link again
                if number == self.hold_at:
                    self.holding.set()
                await asyncio.sleep(self.hold_s if number else 0)
                msh, msa = str(message.create_ack(ack_code=code)).strip("\r").split("\r")
                writer.writemessage(hl7.parse(f"{msh}\r{msa}||{self.last + 1}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def test_by_the_sequence_number_protocol_a_deliverer_killed_with_an_ack_in_flight_delivers_each_message_once(
        tmp_path):
    """The kill lands while the receiver holds the ACK of message 8 (it has taken it): without the protocol that
    message is sent again (the test above); with it, the restarted deliverer starts the link, learns the receiver
    expects 9, and counts 8 as delivered. Every message arrives exactly once, in order."""
    from gateway.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    queued = _queued(outbox, 20)
    port = free_port()

    with SequencedListener(port, hold_at=8) as ris:
        first = _driver(outbox, port, "--sequence")
        assert ris.holding.wait(60), "message 8 never arrived"
        _kill(first)  # the receiver has taken message 8; its ACK is still held
        pending = {json.loads(p.read_text())["id"]: json.loads(p.read_text()).get("sequence") for p in outbox.waiting()}
        _drain_after_restart(outbox, port, "--sequence")
    assert all(queued.values()) and 8 in pending.values()  # message 8 was taken but still queued at the kill
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in ris.messages]
    numbers = [int(str(hl7.parse(m).segment("MSH")[13])) for m in ris.messages]
    assert sorted(ids) == sorted(queued) and len(ids) == 20  # each message taken exactly once
    assert numbers == list(range(1, 21))  # in order
    assert ris.repeats == 0  # and none even sent twice


def test_a_receiver_without_the_protocol_is_named_and_nothing_is_dropped(tmp_path, caplog):
    from gateway.outbox import Deliverer, Outbox

    outbox = Outbox(tmp_path / "outbox")
    _queued(outbox, 2)
    port = free_port()
    with MLLPListener(port) as ris:  # acknowledges with AA and no expected number
        deliverer = Deliverer(outbox, Destinations(hl7=f"127.0.0.1:{port}", hl7_sequence=True))
        assert deliverer.drain_once() == 0
    assert outbox.depth() == 2 and len(ris.messages) == 1  # only the link-start message went out
    assert "does not implement the sequence number protocol" in caplog.text


def test_msh13_and_msa4_are_read_and_written_where_hl7_puts_them():
    from gateway.hl7_sequence import expected_number, start_message, with_sequence

    oru = hl7_oru(_source(), _result())
    numbered = hl7.parse(with_sequence(oru, 42))
    assert str(numbered.segment("MSH")[13]) == "42" and str(numbered.segment("MSH")[10]) == str(
        hl7.parse(oru).segment("MSH")[10])
    assert len(numbered) == len(hl7.parse(oru))  # every segment kept
    start = hl7.parse(start_message("S1"))
    assert str(start.segment("MSH")[13]) == "0" and len(start) == 1
    assert expected_number("MSH|^~\\&|A|B|||20260101||ACK|C1|P|2.5.1\rMSA|AA|X1||9") == 9
    assert expected_number("MSH|^~\\&|A|B|||20260101||ACK|C1|P|2.5.1\rMSA|AA|X1") is None


class FakeReceiver:
    """The protocol's receiving side as a function (``exchange``), with knobs to make it misbehave."""

    def __init__(self, last: int = 0, code: str = "AA", skip: int = 1) -> None:
        self.last, self.code, self.skip, self.taken = last, code, skip, []

    def __call__(self, address: str, message: str) -> str:
        parsed = hl7.parse(message)
        number = int(str(parsed.segment("MSH")[13]))
        if number == self.last + 1:
            self.taken.append(number)
            self.last = number
        msh, msa = str(parsed.create_ack(ack_code=self.code if number else "AA")).strip("\r").split("\r")
        expected = self.last + (self.skip if number else 1)
        return f"{msh}\r{msa}||{expected}"


@pytest.mark.parametrize("receiver, error", [
    (FakeReceiver(code="AR"), "answered MSA AR to message 1"),  # rejected, though it names the next number
    (FakeReceiver(skip=3), "(expects 4)"),  # a number skipped
    (FakeReceiver(last=49), "expects message number 50, but this gateway has numbered only 0"),  # ahead of us
])
def test_a_receiver_out_of_step_stops_delivery_and_nothing_is_marked_delivered(tmp_path, receiver, error):
    from gateway.hl7_sequence import SequencedSender
    from gateway.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    _queued(outbox, 3)
    sender = SequencedSender("ris:2575", tmp_path / "outbox" / "hl7-sequence", exchange=receiver)
    done = []
    with pytest.raises(OSError, match=re.escape(error)):
        sender.deliver(outbox.waiting(), done.append)
    assert done == [] and outbox.depth() == 3 and sender.expected is None  # the link starts again next time


def test_a_sequenced_sender_numbers_in_queue_order_and_keeps_the_numbers(tmp_path):
    from gateway.hl7_sequence import SequencedSender, SequenceNumbers
    from gateway.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    queued = list(_queued(outbox, 3))
    receiver, counter = FakeReceiver(), tmp_path / "outbox" / "hl7-sequence"
    SequencedSender("ris:2575", counter, exchange=receiver).deliver(outbox.waiting(), outbox.delivered)
    assert receiver.taken == [1, 2, 3] and outbox.depth() == 0 and SequenceNumbers(counter).last() == 3
    numbered = {json.loads(p.read_text())["id"]: json.loads(p.read_text())["sequence"] for p in outbox.sent.iterdir()}
    assert [numbered[i] for i in queued] == [1, 2, 3]  # the queue's order
    counter.write_text("")  # a counter lost (a power cut before its fsync, in the old code)
    _queued(outbox, 4)  # one more (ids repeat for the first 3: not queued again)
    with pytest.raises(OSError, match="sequence state is lost"):
        SequencedSender("ris:2575", counter, exchange=receiver).deliver(outbox.waiting(), outbox.delivered)
    assert outbox.depth() == 1
