"""Faults under load: python-backend stub processes killed while clients keep sending real images.

Triton 2.51 does not restart a dead stub (the server stays "ready" while that instance fails every
request); ``ops.watchdog.StubWatchdog`` reloads the model, and ``TriageClient`` retries the requests that hit
the dead instance meanwhile. The test counts requests sent, failed and retried, and records them in
build/test-artifacts/fault_stub_kill.json.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from ops.ports import free_port

from ops.server import TritonServer
from tests.conftest import Load, write_artifact

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# (seconds into the load, model instance whose stub is killed): a model with two instances, then
# single-instance models (every request to them fails until the reload) at the start and end of the ensemble
KILLS = [(3.0, "cxr_preprocess_0_0"), (8.0, "lung_segmentation_0_0"), (13.0, "triage_router_0_1")]
DURATION_S = 20.0
CONCURRENCY = 8


@pytest.fixture
def server(repository, tmp_path):
    server = TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log")
    server.start(timeout_s=240)
    yield server
    server.stop(timeout_s=10)  # Triton waits its full exit timeout on the instances whose stubs were killed


def test_killed_stubs_are_reloaded_and_retried_requests_all_succeed(server, test_rows):
    images = [r.image.read_bytes() for r in test_rows[:24]]
    killed = []
    with Load(server.grpc_url, images, clients=CONCURRENCY) as load:
        start = time.monotonic()
        for at, instance in KILLS:
            time.sleep(max(0.0, start + at - time.monotonic()))
            os.kill(server.watchdog.stubs()[instance][1], signal.SIGKILL)
            killed.append(instance)
        time.sleep(max(0.0, start + DURATION_S - time.monotonic()))
    results = load.answers

    failed = [r for r in results if r.error is not None]
    retried = [r for r in results if r.attempts > 1]
    restarted = [model for model, _ in server.watchdog.restarts]
    write_artifact("fault_stub_kill", {
        "killed": killed, "requests": len(results), "failed": len(failed), "retried": len(retried),
        "retries": sum(r.attempts - 1 for r in retried), "reloads": server.watchdog.restarts,
        "concurrency": CONCURRENCY, "duration_s": DURATION_S,
    })
    assert not failed, failed[:3]
    assert retried, "no request hit a dead stub: the kills did not land under load"
    assert sorted(restarted) == sorted(k.rsplit("_", 2)[0] for k in killed)
    assert not server.watchdog.dead_models() and server.is_ready()
    assert len(results) > 50
