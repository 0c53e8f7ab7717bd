"""Model releases under continuous load: publish (gates), promote, roll back, with zero failed requests.

The server runs on a copy of the built repository in explicit model-control mode. Candidate classifiers are
the shipped weights with the classifier head nudged (a real, different model that keeps its accuracy) and
with the head zeroed (a broken one the quality gate must stop). Requests sent/failed and the releases each
answer came from are recorded in build/test-artifacts/rollout.json.
"""
from __future__ import annotations

import csv
import json
import shutil
import time

import pytest

from ops.ports import free_port

from ops.server import TritonServer
from cxr.specs import CLASSIFIER
from cxr.release_record import load_state
from export.publish import publish
from export.release import publish_thresholds
from ops.rollout import Rollout
from tests.conftest import REPO, Load, write_artifact

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _weights(tmp_path, name: str, edit) -> str:
    """The shipped classifier with ``edit(weight, bias)`` applied to its linear head."""
    import torch

    from training.models import create_model

    model = create_model(CLASSIFIER.name)
    head = next(n for n, m in model.named_modules() if m is model.head)
    checkpoint = torch.load(REPO / "weights" / CLASSIFIER.weights, map_location="cpu", weights_only=False)
    edit(checkpoint["state_dict"][f"{head}.weight"], checkpoint["state_dict"][f"{head}.bias"])
    path = tmp_path / f"{name}.pt"
    torch.save(checkpoint, path)
    return str(path)


def _gate_manifest(data_dir, tmp_path, n: int = 40) -> str:
    """The first ``n`` test rows (the gates' own default is the whole test split; this keeps the test short)."""
    with (data_dir / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["split"] == "test"][:n]
        fields = reader.fieldnames
    path = data_dir / "manifest.csv"  # image paths are relative to the manifest's folder: write beside a link
    out = tmp_path / "gate" / "manifest.csv"
    out.parent.mkdir()
    for entry in path.parent.iterdir():
        if entry.name != "manifest.csv":
            (out.parent / entry.name).symlink_to(entry)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return str(out)


def test_publish_promote_rollback_under_load_without_a_failed_request(repository, test_rows, data_dir, tmp_path):
    import torch

    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    manifest = _gate_manifest(data_dir, tmp_path)
    nudged = _weights(tmp_path, "nudged", lambda weight, bias: bias.add_(torch.tensor(0.01).half()))
    # a head whose weights were lost: every class's logit the same constant, high enough that the gate's energy
    # feature (logsumexp of the logits) lies far from any real CXR's. (Logits all 0 are not enough for
    # resnet18_half: log 5 = 1.61 is 1.7 sd below real studies' mean energy of 2.18, so only quality stops it.)
    broken = _weights(tmp_path, "broken", lambda weight, bias: (weight.zero_(), bias.fill_(8.0)))

    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log").start(timeout_s=240)
    rollout = Rollout(repo, server.admin)
    marks = {}
    try:
        with Load(server.grpc_url, [r.image.read_bytes() for r in test_rows[:16]]) as load:
            time.sleep(3)
            rejected = publish(repo, CLASSIFIER.role, broken, manifest=manifest)
            good = publish(repo, CLASSIFIER.role, nudged, manifest=manifest)
            shadowed = rollout.shadow(good["version"], fraction=1.0)  # every study also to the candidate
            time.sleep(3)
            comparisons = _shadow_comparisons(server)
            rollout.shadow(good["version"], fraction=0)
            marks["promote"] = time.monotonic()
            promoted = rollout.promote()
            marks["promoted"] = time.monotonic()
            time.sleep(4)
            marks["rollback"] = time.monotonic()
            rolled_back = rollout.rollback()
            marks["rolled_back"] = time.monotonic()
            time.sleep(4)
        state = load_state(repo)
    finally:
        server.stop()

    answers = load.answers
    failed = [a for a in answers if a.error is not None]
    write_artifact("rollout", {
        "requests": len(answers), "failed": len(failed), "retried": sum(a.attempts > 1 for a in answers),
        "rejected_gates": rejected["gates"], "published_release": good["release"], "promoted": promoted,
        "shadow": {**shadowed, "comparisons": comparisons},
        "rolled_back": rolled_back,
        "releases_answered": {str(r): sum(a.release == r for a in answers)
                              for r in sorted({a.release for a in answers if a.release})},
    })
    # the broken model was stopped by the quality gate, and by the safety gate's acceptance (its constant logits
    # are unlike any CXR's to the gate's energy feature: the gate refuses every real study, so none is scored);
    # nothing changed for the server
    assert rejected["release"] is None
    assert "no study scored (the safety gate refused 40 of 40)" in next(g for g in rejected["gates"] if g["name"] == "quality")["detail"]
    assert {g["name"]: g["passed"] for g in rejected["gates"]} == {
        "parity": True, "quality": False, "gate acceptance": False, "gate fitted for these weights": True, "latency": True}
    # other weights than the safety gate was fitted for: published, with the warning to refit it
    fitted_for = next(g for g in good["gates"] if g["name"] == "gate fitted for these weights")
    assert "refit it with `cxr thresholds gate --publish`" in fitted_for["detail"]
    assert (repo / CLASSIFIER.role / str(rejected["version"]) / "manifest.json").exists()
    # the nudged one passed, became release 2, served, and was rolled back to release 1
    assert good["release"] == 2 and all(g["passed"] for g in good["gates"])
    assert promoted["changed"] == {CLASSIFIER.role: [1, good["version"]], "triage_router": [1, 2]}
    assert rolled_back["serving"] == 1 and state["serving"] == 1
    assert [h["release"] for h in state["history"]] == [1, 2, 1]
    assert not failed, failed[:3]
    # shadowing compared studies with the candidate but every answer before the promotion is release 1's
    assert sum(comparisons.values()) > 0 and comparisons.get("agree", 0) > comparisons.get("disagree", 0)
    # a request runs on the release it was sent to: answered before the promotion began -> release 1; sent after
    # it finished and answered before the rollback began -> release 2; sent after the rollback finished -> 1
    before = [a.release for a in answers if a.answered < marks["promote"]]
    during = [a.release for a in answers if a.sent > marks["promoted"] and a.answered < marks["rollback"]]
    after = [a.release for a in answers if a.sent > marks["rolled_back"]]
    assert before and set(before) == {1} and during and set(during) == {2} and after and set(after) == {1}


def test_thresholds_are_a_release_of_their_own(repository, tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    thresholds = json.loads((REPO / "configs" / "triage_thresholds.json").read_text())
    thresholds["version"] = "site-test.1"
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds))
    release = publish_thresholds(repo, path)
    state = load_state(repo)
    assert state["serving"] == 1 and state["releases"][str(release)]["thresholds_version"] == "site-test.1"
    assert state["releases"][str(release)]["models"]["cxr_classifier"] == state["releases"]["1"]["models"]["cxr_classifier"]
    router = repo / "triage_router" / str(release)
    assert json.loads((router / "thresholds.json").read_text())["version"] == "site-test.1"
    with pytest.raises(ValueError):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"version": "x", "urgent": {"nonsense": 1}}))
        publish_thresholds(repo, bad)


def _shadow_comparisons(server) -> dict[str, float]:
    """``cxr_shadow_comparisons`` summed over labels: {"agree": n, "disagree": m}."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://localhost:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for agree, value in re.findall(r'^cxr_shadow_comparisons\{[^}]*agree="(true|false)"[^}]*\} (\S+)$', text, re.M):
        key = "agree" if agree == "true" else "disagree"
        totals[key] = totals.get(key, 0) + float(value)
    return totals
