"""The Kubernetes manifests: valid against the Kubernetes 1.37 schemas (kubernetes-validate, strict), and wired
together (probes on Triton's health API, repository from object storage, HPA metric = adapter rule, spool volume)."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.37.0"


def _documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str) -> dict:
    return next(d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)  # raises ValidationError with the path of the problem


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_triton_probes_health_and_reads_the_repository_from_object_storage():
    pod = _one("Deployment", "triton")["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = {e["name"]: e for e in triton["env"]}
    assert env["CXR_MODEL_REPOSITORY"]["value"].startswith("s3://")
    assert "--model-control-mode=explicit" in triton["args"]  # cxr models promote/rollback need it
    assert any(a.startswith("--grpc-restricted-protocol=model-repository") for a in triton["args"])
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    ports = {p["name"]: p["port"] for p in _one("Service", "triton")["spec"]["ports"]}
    assert ports["grpc"] == 8001 and ports["metrics"] == 8002


def test_autoscaler_uses_the_metric_prometheus_adapter_defines():
    hpa = _one("HorizontalPodAutoscaler", "triton")["spec"]
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(_one("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])["rules"]
    assert any(rule["name"]["as"] == metric and "nv_inference_queue_duration_us" in rule["metricsQuery"] for rule in rules)
    assert hpa["scaleTargetRef"]["name"] == "triton" and hpa["minReplicas"] >= 2


def test_gateway_spool_is_a_persistent_volume_per_replica():
    sts = _one("StatefulSet", "gateway")["spec"]
    container = sts["template"]["spec"]["containers"][0]
    spool = container["args"][container["args"].index("--spool") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == spool and sts["volumeClaimTemplates"][0]["metadata"]["name"] == "spool"
    assert container["args"][container["args"].index("--triton") + 1] == "triton:8001"


def test_replicas_are_addressable_one_by_one_and_never_all_disrupted():
    labels = _one("Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    pods = _one("Service", "triton-pods")["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"].items() <= labels.items()  # cxr models promote --url POD
    pdb = _one("PodDisruptionBudget", "triton")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < _one("HorizontalPodAutoscaler", "triton")["spec"]["minReplicas"]
