"""Triton python model ``cxr_preprocess``: encoded DICOM/PNG/JPEG bytes -> network inputs.

A thin adapter over :func:`cxr.preprocess.prepare_bytes`, the same code the training datasets use.
A request with an image that cannot be triaged gets its own error response naming the problem;
other requests in the same batch are unaffected. Refusals are counted by kind (``cxr_images_rejected``).
"""
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# This version's own copy of the runtime package comes first: the repository runs the code it was built with,
# not whatever `cxr` the host happens to have installed (tests/model_repository/test_self_contained.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cxr.metrics import record
from cxr.pixels import REJECTION_KINDS, ImageError
from cxr.preprocess import prepare_bytes
from cxr.specs import MODEL_SPECS, PREPROCESS


class TritonPythonModel:
    def initialize(self, args):
        # Which spec feeds which output: the specs' input names are this model's output names.
        self.specs = []
        for out in PREPROCESS.outputs:
            spec = next(s for s in MODEL_SPECS.values() if out.name in {t.name for t in s.inputs})
            self.specs.append((out.name, spec))
        self.input_name = PREPROCESS.inputs[0].name
        self.rejected_family = pb_utils.MetricFamily("cxr_images_rejected", "Images refused by the decoder, by reason",
                                                     pb_utils.MetricFamily.COUNTER)  # must outlive its metrics
        self.rejected = {kind: self.rejected_family.Metric(labels={"reason": kind}) for kind in REJECTION_KINDS}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                blobs = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
                prepared = [prepare_bytes(_as_bytes(b), tuple(s for _, s in self.specs)) for b in blobs]
                outputs = [
                    pb_utils.Tensor(name, np.stack([p[i] for p in prepared]))
                    for i, (name, _) in enumerate(self.specs)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except ImageError as exc:
                record(self.rejected[exc.kind].increment, 1)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad image: {exc}")))
            except Exception as exc:  # never let one request take the model down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess failed: {exc!r}")))
        return responses


def _as_bytes(blob) -> bytes:
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, np.ndarray):
        return blob.tobytes()
    return bytes(blob)
