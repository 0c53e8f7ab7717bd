"""The KServe variant: an InferenceService on the Triton runtime with a canary split, the same image and repository
as the plain Deployment; valid against KServe's own API types (:mod:`tests.deploy.kserve_schema`: the generated
classes of the pinned kserve SDK wheel, with Kubernetes' strict schemas for the Kubernetes types inside)."""
from __future__ import annotations

from pathlib import Path

import hashlib
import re

import pytest
import yaml

from tests.deploy.kserve_schema import PINNED, Schema, pinned_wheel

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "canaryTrafficPercent", "triton"}  # v1beta1 PredictorSpec
TRITON_FIELDS = {"image", "storageUri", "protocolVersion", "args", "ports", "env", "resources"}  # container + storage


def test_inference_service_runs_the_serving_image_with_a_canary_split():
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS and 0 < predictor["canaryTrafficPercent"] < 100
    assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= predictor["minReplicas"]
    triton = predictor["triton"]
    assert set(triton) <= TRITON_FIELDS and triton["protocolVersion"] == "v2"
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "triton.yaml").read_text())
                      if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert triton["image"] == deployment["image"]  # one serving image for both ways of running
    assert triton["storageUri"].startswith("s3://") and "--model-control-mode=explicit" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.fixture(scope="module")
def schema() -> Schema:
    wheel = pinned_wheel()
    if not wheel.exists():
        pytest.fail(f"no {wheel.relative_to(wheel.parents[2])}: `make kserve-schema` downloads it (make test does)",
                    pytrace=False)
    pinned = re.search(r"--hash=sha256:(\w+)", PINNED.read_text()).group(1)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == pinned, f"{wheel} is not the pinned file"
    return Schema(wheel)


def _inference_service() -> dict:
    return yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())


def test_inference_service_fits_kserves_api_types(schema):
    assert schema.types["V1beta1InferenceServiceSpec"].required == {"predictor"}  # the schema was read, not empty
    assert schema.problems(_inference_service(), "V1beta1InferenceService") == []


def test_the_schema_check_names_a_misspelt_mistyped_or_missing_field(schema):
    """The check is not vacuous: each kind of mistake, in KServe's types and in the Kubernetes ones inside them."""
    isvc = _inference_service()
    predictor = isvc["spec"]["predictor"]
    predictor["canaryTrafficPercnt"] = predictor.pop("canaryTrafficPercent")
    predictor["minReplicas"] = "2"
    secret = predictor["triton"]["env"][0]["valueFrom"]
    secret["secretKeyRf"] = secret.pop("secretKeyRef")
    assert schema.problems(isvc, "V1beta1InferenceService") == [
        ".spec.predictor.canaryTrafficPercnt: not a field of V1beta1PredictorSpec",
        ".spec.predictor.minReplicas: expected int, got str '2'",
        ".spec.predictor.triton.env[0].valueFrom: Additional properties are not allowed ('secretKeyRf' was unexpected)",
    ]
    assert schema.problems({**isvc, "spec": {}}, "V1beta1InferenceService") == [
        ".spec.predictor: required by V1beta1InferenceServiceSpec, missing"]
