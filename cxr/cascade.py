"""Cascade stage 2 (Cascade-SEMEnet): its input, and the routing of a batch that decides who needs it.

Stage 2 looks only at the lungs: the classifier's letterboxed image, back in ``[0, 1]``, multiplied by the
post-processed lung mask (dilated a little so the lung borders stay visible), resized to the stage-2 input
size and normalised. Blanking everything outside the lungs removes the text labels and markers the paper
found the network cheating on.

:func:`route_batch` is the router's whole decision (mask post-processing, thresholds, stage 2 where due),
shared by ``triage_router``, the in-process pipeline and the benchmark's naive server; each passes its own
way of running stage 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

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
    """One study after routing: its post-processed lung mask, lung fraction and triage result."""

    mask: np.ndarray
    lung_fraction: float
    result: TriageResult


def route_batch(probabilities: Sequence[np.ndarray], raw_masks: Sequence[np.ndarray], cls_images: Sequence[np.ndarray],
                thresholds: Thresholds, stage2: Stage2, model: str = COVID_STAGE2.role) -> list[Routed]:
    """Triage a batch: clean each raw mask ``(1, H, W)``, apply ``thresholds``, and run ``stage2`` once on the
    lung-only images of the studies :func:`cxr.triage.needs_stage2` selects."""
    masks = [postprocess_mask(raw[0]) for raw in raw_masks]
    fractions = [lung_fraction(m) for m in masks]
    results = [triage(p, f, thresholds) for p, f in zip(probabilities, fractions)]
    due = [i for i, p in enumerate(probabilities) if needs_stage2(p, thresholds)]
    if due:
        covid, error = stage2(np.stack([stage2_input(cls_images[i], masks[i]) for i in due]))
        for k, i in enumerate(due):
            results[i] = with_stage2(results[i], None if covid is None else float(covid[k]), thresholds, model, error)
    return [Routed(m, f, r) for m, f, r in zip(masks, fractions, results)]
