"""Triton python model running an ONNX graph with ONNX Runtime (the CPU profile of an ONNX step).

Serves ``lung_segmentation`` and ``cxr_classifier`` alike: tensor names come from ``model_config``
and the graph. All requests of one dynamic batch are concatenated and run as ONNX Runtime calls of power-of-two
batch sizes (13 images: 8 + 4 + 1), so the session's kept memory arena sees a handful of shapes
(``cxr.onnx_session``).
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# This version's own copy of the runtime package comes first: the repository runs the code it was built with,
# not whatever `cxr` the host happens to have installed (tests/model_repository/test_self_contained.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cxr.batching import concat_requests, non_finite, split_batch
from cxr.onnx_session import cpu_session, piece_sizes, run_in_pieces


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        self.session = cpu_session(
            os.path.join(model_dir, params.get("onnx_file", "model.onnx")), int(params.get("intra_op_threads", "2"))
        )
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.piece_sizes = piece_sizes(max(1, config.get("max_batch_size", 1)))
        self._warm_up(config)

    def _warm_up(self, config):
        """Run zeros once at every piece size, so the kept arena reaches its high-water mark while loading,
        not minutes into traffic (a 10-minute soak without this: PSS 963 -> 1,040 MB over the first 3 min)."""
        for size in self.piece_sizes:
            feeds = {i["name"]: np.zeros([size, *map(int, i["dims"])], pb_utils.triton_string_to_numpy(i["data_type"]))
                     for i in config["input"]}
            self.session.run(self.output_names, feeds)

    def execute(self, requests):
        inputs = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names] for r in requests]
        responses = [None] * len(requests)
        for i, arrays in enumerate(inputs):
            problem = non_finite(self.input_names, arrays)
            if problem is not None:  # refused alone; the rest of the batch runs
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
        ok = [i for i, r in enumerate(responses) if r is None]
        if not ok:
            return responses
        feeds, sizes = {}, None
        for k, name in enumerate(self.input_names):
            feeds[name], sizes = concat_requests([inputs[i][k] for i in ok])
        try:
            outputs = run_in_pieces(self.session, self.output_names, feeds, self.piece_sizes[-1])
        except Exception as exc:
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            for i in ok:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses
        per_output = [split_batch(out, sizes) for out in outputs]
        for j, i in enumerate(ok):
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, per_output[k][j]) for k, n in enumerate(self.output_names)])
        return responses
