"""Which failed requests the client sends again: transport and replica failures, never a rejected image."""
from __future__ import annotations

import pytest

from client.grpc_client import is_transient


@pytest.mark.parametrize("error", [
    "failed to connect to all addresses", "Socket closed", "[StatusCode.UNAVAILABLE] Connection reset by peer",
    "Stub process 'cxr_classifier_0_0' is not healthy.",
    "Received http2 header with status: 502",  # nginx lost the replica that had the request
    "Received http2 header with status: 503",
])
def test_transport_and_replica_failures_are_retried(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    "bad image: truncated or corrupt JPEG: image file is truncated",
    "bad image: Socket closed",  # a rejection stays a rejection whatever its text
    "Received http2 header with status: 400",
])
def test_rejections_and_client_errors_are_not(error):
    assert not is_transient(error)
