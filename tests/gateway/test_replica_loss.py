"""The gateway in front of two Triton replicas behind nginx (the shape of a Kubernetes Service): one replica is
SIGKILLed while a modality keeps sending, and never comes back; every accepted study still gets exactly one result.
What was measured goes to build/test-artifacts/replica_loss.json."""
from __future__ import annotations

import io
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest

from ops.balancer import GrpcBalancer
from ops.ports import free_port
from ops.server import TritonServer
from tests.conftest import write_artifact
from tests.gateway.conftest import StudiesUnderLoad
from tests.gateway.test_gateway import _cr

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_a_replica_killed_under_gateway_load_loses_no_study(repository, test_rows, tmp_path):
    servers = [TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / f"triton-{i}.log")
               for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.start(timeout_s=300), servers))
    balancer = GrpcBalancer([s.grpc_url for s in servers], free_port()).start()
    load = StudiesUnderLoad(tmp_path, balancer.url, [pydicom.dcmread(io.BytesIO(_cr(row))) for row in test_rows[:16]])
    try:
        load.start()
        os.killpg(servers[1].process.pid, signal.SIGKILL)  # one replica and its stubs, for good
        sent_before_kill = len(load.statuses)
        load.go_on()
        records, referenced = load.finish()
    finally:
        load.stop()
        balancer.stop()
        for server in servers:
            server.stop()
    write_artifact("replica_loss", {
        "replicas": 2, "killed": 1, "accepted": load.statuses.count(0),
        "results": sum(r["outcome"] == "result" for r in records), "lost": len(set(load.uids) - set(referenced)),
        "duplicates": len(referenced) - len(set(referenced)), "sent_after_the_kill": len(load.datasets) - sent_before_kill,
    })
    assert sent_before_kill < len(load.datasets)  # the modality was still sending when the replica died
    assert load.statuses == [0x0000] * len(load.datasets)
    assert [r["outcome"] for r in records] == ["result"] * len(load.uids)
    assert referenced == sorted(load.uids)  # exactly one SR per accepted instance: none lost, none twice
