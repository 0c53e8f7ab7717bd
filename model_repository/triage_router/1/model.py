"""Triton python model ``triage_router``: probabilities + raw lung mask -> triage result, with the cascade.

It is the ensemble's last step and also passes the classifier's probabilities and CAM through, so every
ensemble output comes from here (see :data:`cxr.specs.ROUTER`).

:func:`cxr.cascade.route_batch` cleans the lung mask (MANet post-processing), computes lung coverage and
applies the site thresholds (``thresholds.json`` beside this file, a versioned release). When the first stage
finds viral/covid likely, it runs the Cascade-SEMEnet stage-2 model ``covid_stage2`` on the lung-only images,
here with BLS, one call for all such studies of the batch; other studies do not pay for it. The result
records which models ran.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.cascade import route_batch
from cxr.specs import COVID_STAGE2, ROUTER
from cxr.triage import Thresholds


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        self.thresholds = Thresholds.load(os.path.join(model_dir, params.get("thresholds_file", "thresholds.json")))
        self.model_versions = json.loads(params.get("model_versions", "{}"))
        self.stage2_model = params.get("stage2_model", COVID_STAGE2.role)
        self.input_names = [t.name for t in ROUTER.inputs]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                probs, cam, raw, cls_image = (pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                                              for n in self.input_names)
                responses.append(pb_utils.InferenceResponse(self._route(probs, cam, raw, cls_image)))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"triage failed: {exc!r}")))
        return responses

    def _route(self, probs, cam, raw_masks, cls_images):
        routed = route_batch(probs, raw_masks, cls_images, self.thresholds, self._stage2, self.stage2_model)
        labels, payloads = [], []
        for r in routed:
            payload = r.result.to_dict()
            payload["model_versions"] = self.model_versions
            labels.append(r.result.top_finding.encode())
            payloads.append(json.dumps(payload).encode())
        return [
            pb_utils.Tensor("label", np.array(labels, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("triage", np.array(payloads, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("lung_fraction", np.array([r.lung_fraction for r in routed], dtype=np.float32).reshape(-1, 1)),
            pb_utils.Tensor("lung_mask", np.stack([r.mask[None] for r in routed]).astype(np.uint8)),
            pb_utils.Tensor("probabilities", probs),
            pb_utils.Tensor("cam", cam),
        ]

    def _stage2(self, images):
        """Covid probabilities from the stage-2 model (BLS), or ``(None, error)``."""
        request = pb_utils.InferenceRequest(
            model_name=self.stage2_model,
            requested_output_names=["stage2_probabilities"],
            inputs=[pb_utils.Tensor(COVID_STAGE2.inputs[0].name, images.astype(np.float32))],
        )
        response = request.exec()
        if response.has_error():
            return None, response.error().message()
        probs = pb_utils.get_output_tensor_by_name(response, "stage2_probabilities").as_numpy()
        return probs[:, COVID_STAGE2.labels.index("covid")], None
