"""The gateway in front of two Triton replicas behind nginx (the shape of a Kubernetes Service): one replica is
SIGKILLed while a modality keeps sending, and never comes back; every accepted study still gets exactly one result.
What was measured goes to build/test-artifacts/replica_loss.json."""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from gateway.results import read_sr
from gateway.service import Gateway, GatewayConfig
from ops.balancer import GrpcBalancer
from ops.ports import free_port
from ops.server import TritonServer
from tests.conftest import write_artifact
from tests.gateway.conftest import GATEWAY_AET, SCU_AET, c_store, results_by_class, wait_until
from tests.gateway.pacs import Orthanc
from tests.gateway.test_gateway import _cr

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_a_replica_killed_under_gateway_load_loses_no_study(repository, test_rows, tmp_path):
    servers = [TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / f"triton-{i}.log")
               for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.start(timeout_s=300), servers))
    balancer = GrpcBalancer([s.grpc_url for s in servers], free_port()).start()
    gateway_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", GATEWAY_AET, gateway_port)
    config = GatewayConfig(GATEWAY_AET, gateway_port, balancer.url, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                           tmp_path / "spool", allow_ae=(SCU_AET,), host="127.0.0.1")
    gateway = Gateway(config).start()
    datasets = [pydicom.dcmread(io.BytesIO(_cr(row))) for row in test_rows[:16]]
    uids = [ds.SOPInstanceUID for ds in datasets]
    statuses: list[int] = []

    def modality() -> None:  # four studies every 1.5 s, before and after the kill
        for i in range(0, len(datasets), 4):
            statuses.extend(c_store(gateway_port, datasets[i : i + 4]))
            time.sleep(1.5)

    sender = threading.Thread(target=modality)
    try:
        sender.start()
        wait_until(lambda: len(list(gateway.spool.done.glob("*.json"))) >= 2, what="the first results")
        os.killpg(servers[1].process.pid, signal.SIGKILL)  # one replica and its stubs, for good
        sent_before_kill = len(statuses)
        sender.join()
        wait_until(lambda: all(gateway.spool.record(u) for u in uids), timeout_s=300, what="every instance handled")
        records = [gateway.spool.record(u) for u in uids]
        srs = results_by_class(orthanc, set(uids)).get(Comprehensive3DSRStorage, [])
    finally:
        gateway.stop()
        balancer.stop()
        for server in servers:
            server.stop()
        orthanc.stop()
    referenced = sorted(read_sr(s)["image"] for s in srs)
    write_artifact("replica_loss", {
        "replicas": 2, "killed": 1, "accepted": statuses.count(0),
        "results": sum(r["outcome"] == "result" for r in records), "lost": len(set(uids) - set(referenced)),
        "duplicates": len(referenced) - len(set(referenced)), "sent_after_the_kill": len(datasets) - sent_before_kill,
    })
    assert sent_before_kill < len(datasets)  # the modality was still sending when the replica died
    assert statuses == [0x0000] * len(datasets)
    assert [r["outcome"] for r in records] == ["result"] * len(uids)
    assert referenced == sorted(uids)  # exactly one SR per accepted instance: none lost, none twice
