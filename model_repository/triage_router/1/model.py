"""Triton python model ``triage_router``: probabilities + raw lung mask -> triage result.

It is the ensemble's last step and also passes the classifier's probabilities and CAM through, so every
ensemble output comes from here (see :data:`cxr.specs.ROUTER`).

Cleans the lung mask (MANet post-processing), computes lung coverage and applies the site thresholds
(``thresholds.json`` beside this file, a versioned release) with :func:`cxr.triage.triage`.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.lungmask import lung_fraction, postprocess_mask
from cxr.specs import ROUTER
from cxr.triage import Thresholds, triage


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        self.thresholds = Thresholds.load(os.path.join(model_dir, params.get("thresholds_file", "thresholds.json")))
        self.model_versions = json.loads(params.get("model_versions", "{}"))
        self.probs_name, self.cam_name, self.mask_name = (t.name for t in ROUTER.inputs)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                probs = pb_utils.get_input_tensor_by_name(request, self.probs_name).as_numpy()
                cam = pb_utils.get_input_tensor_by_name(request, self.cam_name).as_numpy()
                raw = pb_utils.get_input_tensor_by_name(request, self.mask_name).as_numpy()
                responses.append(pb_utils.InferenceResponse(self._route(probs, cam, raw)))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"triage failed: {exc!r}")))
        return responses

    def _route(self, probs, cam, raw_masks):
        labels, results, fractions, masks = [], [], [], []
        for p, raw in zip(probs, raw_masks):
            mask = postprocess_mask(raw[0])
            fraction = lung_fraction(mask)
            result = triage(p, fraction, self.thresholds).to_dict()
            result["model_versions"] = self.model_versions
            labels.append(result["top_finding"].encode())
            results.append(json.dumps(result).encode())
            fractions.append(fraction)
            masks.append(mask[None])
        return [
            pb_utils.Tensor("label", np.array(labels, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("triage", np.array(results, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("lung_fraction", np.array(fractions, dtype=np.float32).reshape(-1, 1)),
            pb_utils.Tensor("lung_mask", np.stack(masks).astype(np.uint8)),
            pb_utils.Tensor("probabilities", probs),
            pb_utils.Tensor("cam", cam),
        ]
