"""Cascade stage 2 (Cascade-SEMEnet): its input, and the routing of a batch that decides who needs it.

Stage 2 looks only at the lungs: the classifier's letterboxed image, back in ``[0, 1]``, multiplied by the
post-processed lung mask (dilated a little so the lung borders stay visible), resized to the stage-2 input
size and normalised. Blanking everything outside the lungs removes the text labels and markers the paper
found the network cheating on.

:func:`route_batch` is the router's whole decision (mask post-processing, the safety gate, thresholds, stage 2
where due),
shared by ``triage_router``, the in-process pipeline and the benchmark's naive server; each passes its own
way of running stage 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from cxr.gate import Verdict, batch_features
from cxr.lungmask import lung_fraction, postprocess_mask
from cxr.specs import CLASSIFIER, COVID_STAGE2, ModelSpec
from cxr.triage import Thresholds, TriageResult, needs_stage2, triage, with_stage2

# stage2(images (N, 1, h, w)) -> (covid probability per image, None), or (None, error message).
Stage2 = Callable[[np.ndarray], "tuple[np.ndarray | None, str | None]"]

DILATE_PX = 5  # at the 256 px mask resolution


def stage2_input(cls_image: np.ndarray, lung_mask: np.ndarray, spec: ModelSpec = COVID_STAGE2,
                 source: ModelSpec = CLASSIFIER) -> np.ndarray:
    """``cls_image`` ``(1, H, W)`` (normalised per ``source``) and ``lung_mask`` ``(H, W)`` -> ``(1, h, w)``."""
    unit = cls_image[0] * source.std + source.mean
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * DILATE_PX + 1, 2 * DILATE_PX + 1))
    lungs = cv2.dilate((lung_mask > 0).astype(np.uint8), kernel)
    if lungs.shape != unit.shape:
        lungs = cv2.resize(lungs, unit.shape[::-1], interpolation=cv2.INTER_NEAREST)
    masked = (unit * lungs).astype(np.float32)
    small = cv2.resize(masked, spec.input_size[::-1], interpolation=cv2.INTER_AREA)
    return ((small - spec.mean) / spec.std).astype(np.float32)[None]


@dataclass
class Routed:
    """One study after routing: its post-processed lung mask, lung fraction, gate verdict and triage result.

    A study the gate refuses still has a stage-1 result (stage 2 is not run for it), never returned: callers
    fail its request with :attr:`refused` instead.
    """

    mask: np.ndarray
    lung_fraction: float
    result: TriageResult
    verdict: Verdict = Verdict("accept")

    @property
    def refused(self) -> str | None:
        """The refusal message (``not a frontal chest radiograph (...)``), or None."""
        return self.verdict.message() if self.verdict.decision == "refuse" else None


def route_batch(probabilities: Sequence[np.ndarray], raw_masks: Sequence[np.ndarray], cls_images: Sequence[np.ndarray],
                thresholds: Thresholds, stage2: Stage2, model: str = COVID_STAGE2.role, *,
                cams: Sequence[np.ndarray] | None = None) -> list[Routed]:
    """Triage a batch: clean each raw mask ``(1, H, W)``, judge each study with the thresholds' safety gate
    (which needs the classifier's ``cams``), apply ``thresholds``, and run ``stage2`` once on the lung-only
    images of the accepted studies :func:`cxr.triage.needs_stage2` selects."""
    masks = [postprocess_mask(raw[0]) for raw in raw_masks]
    fractions = [lung_fraction(m) for m in masks]
    gate = thresholds.gate
    if gate is not None and cams is None:
        raise ValueError("the thresholds release has a safety gate: route_batch needs the classifier's cams")
    verdicts = ([gate.judge(v) for v in batch_features(masks, raw_masks, cls_images, cams)]
                if gate is not None else [Verdict("accept")] * len(masks))
    results = [triage(p, f, thresholds, v if gate is not None else None)  # no gate: no quality block
               for p, f, v in zip(probabilities, fractions, verdicts)]
    due = [i for i, p in enumerate(probabilities) if needs_stage2(p, thresholds) and verdicts[i].decision != "refuse"]
    if due:
        covid, error = stage2(np.stack([stage2_input(cls_images[i], masks[i]) for i in due]))
        for k, i in enumerate(due):
            results[i] = with_stage2(results[i], None if covid is None else float(covid[k]), thresholds, model, error)
    return [Routed(m, f, r, v) for m, f, r, v in zip(masks, fractions, results, verdicts)]
