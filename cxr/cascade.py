"""Cascade stage 2 (Cascade-SEMEnet): its input, built the same way in training and in ``triage_router``.

Stage 2 looks only at the lungs: the classifier's letterboxed image, back in ``[0, 1]``, multiplied by the
post-processed lung mask (dilated a little so the lung borders stay visible), resized to the stage-2 input
size and normalised. Blanking everything outside the lungs removes the text labels and markers the paper
found the network cheating on.
"""
from __future__ import annotations

import cv2
import numpy as np

from cxr.specs import CLASSIFIER, COVID_STAGE2, ModelSpec

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
