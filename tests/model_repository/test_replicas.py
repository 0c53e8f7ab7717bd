"""Two Triton replicas on one shared repository behind a real gRPC load balancer (nginx), the shape of a Kubernetes
Service over a Deployment: a release promoted and rolled back across both with one call, then one replica SIGKILLed,
all under continuous load, with zero failed requests. What was measured goes to build/test-artifacts/replicas.json.

Both replicas share one 2-core machine here, so the test is about correctness, not speed (img/s through the
balancer is recorded, not asserted).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cxr.release_record import load_state
from cxr.specs import ENSEMBLE_NAME, ROUTER
from export.release import publish_thresholds
from ops.balancer import GrpcBalancer
from ops.ports import free_port
from ops.rollout import Rollout
from ops.server import TritonServer
from tests.conftest import REPO, Load, write_artifact

pytestmark = [pytest.mark.triton, pytest.mark.slow]
REPLICAS = 2


def _router_pin(server: TritonServer) -> int:
    """The triage_router version the replica's ensemble runs (the release it serves)."""
    steps = server.admin.model_config(ENSEMBLE_NAME)["ensemble_scheduling"]["step"]
    return int(next(s["model_version"] for s in steps if s["model_name"] == ROUTER.role))


def test_replicas_behind_nginx_promote_roll_back_and_lose_one_without_a_failed_request(repository, test_rows, tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    thresholds = json.loads((REPO / "configs" / "triage_thresholds.json").read_text())
    thresholds["version"] = "replicas-test.1"
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    release = publish_thresholds(repo, tmp_path / "thresholds.json")  # release 2: what gets promoted
    key = secrets.token_hex(16)  # one key for the whole Deployment, as a Kubernetes Secret would give it
    servers = [TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / f"triton-{i}.log",
                            admin_key=key) for i in range(REPLICAS)]
    with ThreadPoolExecutor(REPLICAS) as pool:
        list(pool.map(lambda s: s.start(timeout_s=300), servers))
    balancer = GrpcBalancer([s.grpc_url for s in servers], free_port())
    rollout = Rollout(repo, [s.admin for s in servers])
    marks = {}
    try:
        balancer.start()
        with Load(balancer.url, [r.image.read_bytes() for r in test_rows[:16]], clients=4) as load:
            time.sleep(4)
            marks["promote"] = time.monotonic()
            promoted = rollout.promote(release)
            marks["promoted"] = time.monotonic()
            pins_promoted = [_router_pin(s) for s in servers]
            time.sleep(4)
            marks["rollback"] = time.monotonic()
            rolled_back = rollout.rollback()
            marks["rolled_back"] = time.monotonic()
            pins_rolled_back = [_router_pin(s) for s in servers]
            time.sleep(4)
            marks["kill"] = time.monotonic()
            os.killpg(servers[-1].process.pid, signal.SIGKILL)  # the replica and its stubs, as an OOM kill would
            time.sleep(8)
            marks["end"] = time.monotonic()
        state = load_state(repo)
    finally:
        balancer.stop()
        for server in servers:
            server.stop()

    answers = load.answers
    failed = [a for a in answers if a.error is not None]
    after_kill = [a for a in answers if a.sent > marks["kill"]]
    write_artifact("replicas", {
        "replicas": REPLICAS, "balancer": "nginx grpc_pass, round robin", "requests": len(answers),
        "failed": len(failed), "retried": sum(a.attempts > 1 for a in answers),
        "img_s_through_balancer": round(len([a for a in answers if a.sent < marks["promote"]]) / 4.0, 1),
        "promoted": promoted, "rolled_back": rolled_back,
        "router_pins_after_promote": pins_promoted, "router_pins_after_rollback": pins_rolled_back,
        "answered_after_one_replica_was_killed": len(after_kill),
        "releases_answered": {str(r): sum(a.release == r for a in answers)
                              for r in sorted({a.release for a in answers if a.release is not None})},
        "first_failures": [a.error for a in failed[:3]],
    })
    assert not failed, failed[:3]
    # one call moved every replica, and back
    assert promoted["serving"] == release and pins_promoted == [release] * REPLICAS
    assert rolled_back["serving"] == 1 and pins_rolled_back == [1] * REPLICAS and state["serving"] == 1
    # every answer comes from one release; sent after the promotion finished -> the new one everywhere
    during = [a.release for a in answers if a.sent > marks["promoted"] and a.answered < marks["rollback"]]
    after = [a.release for a in answers if a.sent > marks["rolled_back"]]
    assert {a.release for a in answers} <= {1, release}
    assert during and set(during) == {release} and after and set(after) == {1}
    # the surviving replica answered everything sent after the other one died
    assert len(after_kill) >= 4 and all(a.error is None for a in after_kill)
