"""The ``cxr_triage`` pipeline run in-process with ONNX Runtime on a built repository's ONNX files.

Same functions as the served ensemble (``cxr.preprocess``, ``cxr.lungmask``, ``cxr.triage``); used by
``cxr evaluate --onnx`` and as the raw-throughput reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.cascade import route_batch
from cxr.model_config import parse
from cxr.onnx_session import cpu_session, run_in_pieces
from cxr.preprocess import prepare_bytes
from cxr.release_record import read_release, serving_pins
from cxr.specs import CAM, CLASSIFIER, COVID_STAGE2, LUNG_SEGMENTATION, PROBABILITIES, ROUTER, STAGE2_PROBABILITIES
from cxr.triage import Thresholds


def served_onnx_file(repository: Path, role: str) -> str:
    """The ONNX file the repository's config serves for ``role`` (``model.onnx``, or ``model.int8.onnx``)."""
    config = parse((repository / role / "config.pbtxt").read_text())
    return config.parameters["onnx_file"].string_value if "onnx_file" in config.parameters else "model.onnx"


@dataclass
class LocalResult:
    probabilities: np.ndarray
    lung_mask: np.ndarray
    lung_fraction: float
    triage: dict
    refused: str | None = None  # the safety gate's refusal (the served ensemble fails such a request with it)


class LocalPipeline:
    """Args:
        repository: a built model repository (the ONNX files, thresholds and model versions of the release it
            serves).
        threads: ONNX Runtime intra-op threads per session.
        onnx_files: ``{role: path}`` to run other graphs (e.g. INT8) in place of the repository's.
    """

    def __init__(self, repository: str | Path, threads: int = 2, onnx_files: dict[str, str | Path] | None = None) -> None:
        repository = Path(repository)
        pins = serving_pins(repository)
        files = {spec.role: repository / spec.role / str(pins[spec.role]) / served_onnx_file(repository, spec.role)
                 for spec in (LUNG_SEGMENTATION, CLASSIFIER, COVID_STAGE2)}
        files.update(onnx_files or {})
        self.seg = cpu_session(files[LUNG_SEGMENTATION.role], threads)
        self.cls = cpu_session(files[CLASSIFIER.role], threads)
        self._stage2_file, self._stage2, self._threads = files[COVID_STAGE2.role], None, threads
        router = repository / ROUTER.role / str(pins[ROUTER.role])
        self.thresholds = Thresholds.load(router / "thresholds.json")
        release = read_release(router)
        self.release, self.model_versions = release["release"], release["model_versions"]

    def prepare(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Decode and preprocess (raises :class:`cxr.pixels.ImageError` on a bad image)."""
        prepared = [prepare_bytes(b, (LUNG_SEGMENTATION, CLASSIFIER)) for b in blobs]
        return np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])

    def segment(self, seg_in: np.ndarray) -> np.ndarray:
        return run_in_pieces(self.seg, None, {LUNG_SEGMENTATION.inputs[0].name: seg_in})[0]

    def classify(self, cls_in: np.ndarray, raw_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, classes)`` and class-activation maps ``(N, classes, h, w)``."""
        probs, cam = run_in_pieces(self.cls, [PROBABILITIES.name, CAM.name], CLASSIFIER.feeds(cls_in, raw_masks))
        return probs, cam

    def run_batch(self, blobs: list[bytes]) -> list[LocalResult]:
        """Triage a batch of encoded images (raises :class:`cxr.pixels.ImageError` on a bad one)."""
        seg_in, cls_in = self.prepare(blobs)
        raw = self.segment(seg_in)
        return self.route(*self.classify(cls_in, raw), raw, cls_in)

    def stage2(self, images: np.ndarray) -> np.ndarray:
        """Cascade stage 2: covid probability per lung-only image (session opened on first use)."""
        if self._stage2 is None:
            self._stage2 = cpu_session(self._stage2_file, self._threads)
        probs = run_in_pieces(self._stage2, [STAGE2_PROBABILITIES.name], {COVID_STAGE2.inputs[0].name: images})[0]
        return probs[:, COVID_STAGE2.labels.index("covid")]

    def route(self, probs: np.ndarray, cam: np.ndarray, raw: np.ndarray, cls_in: np.ndarray) -> list[LocalResult]:
        """Post-process the masks, judge with the safety gate, apply the thresholds and run the cascade where due,
        as ``triage_router`` does."""
        results = []
        routed = route_batch(probs, raw, cls_in, self.thresholds, lambda x: (self.stage2(x), None), cams=cam)
        for p, r in zip(probs, routed):
            payload = r.result.to_dict()
            payload["model_versions"] = self.model_versions
            payload["release"] = self.release
            results.append(LocalResult(p, r.mask, r.lung_fraction, payload, r.refused))
        return results
