"""The ``cxr_triage`` pipeline run in-process with ONNX Runtime on a built repository's ONNX files.

Same functions as the served ensemble (``cxr.preprocess``, ``cxr.lungmask``, ``cxr.triage``); used by
``cxr evaluate --onnx`` and as the raw-throughput reference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxr.lungmask import lung_fraction, postprocess_mask
from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION, ROUTER
from cxr.triage import Thresholds, triage


@dataclass
class LocalResult:
    probabilities: np.ndarray
    lung_mask: np.ndarray
    lung_fraction: float
    triage: dict


class LocalPipeline:
    def __init__(self, repository: str | Path, threads: int = 2) -> None:
        repository = Path(repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.seg = ort.InferenceSession(str(repository / LUNG_SEGMENTATION.role / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.cls = ort.InferenceSession(str(repository / CLASSIFIER.role / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.thresholds = Thresholds.load(repository / ROUTER.role / "1" / "thresholds.json")
        self.model_versions = json.loads((repository / "build.json").read_text())["model_versions"]

    def run_batch(self, blobs: list[bytes]) -> list[LocalResult]:
        """Triage a batch of encoded images (raises :class:`cxr.pixels.ImageError` on a bad one)."""
        prepared = [prepare_bytes(b, (LUNG_SEGMENTATION, CLASSIFIER)) for b in blobs]
        seg_in = np.stack([p[0] for p in prepared])
        cls_in = np.stack([p[1] for p in prepared])
        (raw,) = self.seg.run(None, {LUNG_SEGMENTATION.inputs[0].name: seg_in})
        _, probs, _ = self.cls.run(None, {CLASSIFIER.inputs[0].name: cls_in, CLASSIFIER.inputs[1].name: raw})
        results = []
        for p, r in zip(probs, raw):
            mask = postprocess_mask(r[0])
            fraction = lung_fraction(mask)
            result = triage(p, fraction, self.thresholds).to_dict()
            result["model_versions"] = self.model_versions
            results.append(LocalResult(p, mask, fraction, result))
        return results
