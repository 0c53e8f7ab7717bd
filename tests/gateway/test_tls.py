"""DICOM over TLS (the Basic TLS Secure Transport Connection Profile), with a CA made in the test (openssl):
the gateway's SCP only talks TLS (mutual: only to callers with a certificate from the CA), and its SCU sends
results to a TLS destination."""
from __future__ import annotations

import io
import ssl

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, Verification

from client.dicom_files import make_dicom
from gateway.results import package
from gateway.service import DicomTLS, Gateway, GatewayConfig
from ops.ports import free_port


def _client_context(pki, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def _echo(port: int, tls_args=None) -> int | None:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRGW", tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture
def tls_gateway(tmp_path, pki):
    tls = DicomTLS(pki / "server.pem", pki / "server.key", pki / "ca.pem", mutual=True)
    gateway = Gateway(GatewayConfig("CXRGW", free_port(), "localhost:1", "PACS@127.0.0.1:1", tmp_path / "spool",
                                    host="127.0.0.1", tls=tls)).start()
    yield gateway
    gateway.stop()


def test_the_scp_speaks_tls_only_and_mutual_tls_needs_a_certificate_from_the_ca(tls_gateway, pki):
    port = tls_gateway.config.port
    assert _echo(port, (_client_context(pki, with_certificate=True), "localhost")) == 0x0000
    assert _echo(port) is None  # plain DICOM on the TLS port: no association
    assert _echo(port, (_client_context(pki, with_certificate=False), "localhost")) is None  # no client certificate


def test_results_go_to_a_tls_destination(tmp_path, pki):
    received = []
    scp = AE(ae_title="PACS")
    scp.add_supported_context(Comprehensive3DSRStorage)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server_context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, ssl_context=server_context,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0x0000)])
    try:
        tls = DicomTLS(pki / "client.pem", pki / "client.key", pki / "ca.pem", scp=False, scu=True)
        gateway = Gateway(GatewayConfig("CXRGW", 0, "localhost:1", f"PACS@localhost:{port}", tmp_path / "spool", tls=tls))
        source = pydicom.dcmread(io.BytesIO(make_dicom(np.random.default_rng(0).random((200, 180)).astype(np.float32))))
        objects = package(source, None, None, error="x")
        assert gateway._send(objects, str(source.SOPInstanceUID)) is True
        plain = Gateway(GatewayConfig("CXRGW", 0, "localhost:1", f"PACS@localhost:{port}", tmp_path / "spool2"))
        assert plain._send(objects, str(source.SOPInstanceUID)) is False  # without TLS the destination refuses
    finally:
        server.shutdown()
    assert [str(d.SOPInstanceUID) for d in received] == [str(objects[0].SOPInstanceUID)]
