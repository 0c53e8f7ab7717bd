"""gRPC over mutual TLS with a CA made here (openssl), against the real Triton server."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def tls_server(repository, pki, tmp_path_factory):
    from ops.ports import free_port
    from ops.server import TLSConfig, TritonServer

    tls = TLSConfig(pki / "server.pem", pki / "server.key", pki / "ca.pem", mutual=True)
    log = tmp_path_factory.mktemp("tls") / "tritonserver.log"
    server = TritonServer(repository, free_port(), free_port(), free_port(), log_path=log, tls=tls)
    server.start(timeout_s=240)
    yield server
    server.stop()


def test_mutual_tls_client_triages_and_others_are_refused(tls_server, pki, xray_jpeg):
    from client.grpc_client import TriageClient

    certs = {"root_certificates": str(pki / "ca.pem"), "private_key": str(pki / "client.key"),
             "certificate_chain": str(pki / "client.pem")}
    good = TriageClient(tls_server.grpc_url, tls=certs, timeout_s=30).triage(xray_jpeg)
    assert good.error is None and good.label
    plain = TriageClient(tls_server.grpc_url, timeout_s=10).triage(xray_jpeg)
    assert plain.error is not None  # no TLS: the handshake fails
    no_client_cert = TriageClient(tls_server.grpc_url, tls={"root_certificates": str(pki / "ca.pem")}, timeout_s=10)
    assert no_client_cert.triage(xray_jpeg).error is not None  # mutual TLS: a client certificate is required
