"""The KServe variant: an InferenceService on the Triton runtime with a canary split, the same image and repository
as the plain Deployment. Checked field by field against serving.kserve.io/v1beta1 as used here (the CRD's schema
is not available offline, so this is not a full schema validation)."""
from __future__ import annotations

from pathlib import Path

import yaml

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
