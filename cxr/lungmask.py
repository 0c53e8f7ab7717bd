"""Lung-mask post-processing from the MANet paper (Xu et al., 2021, Sec. 3.1).

Fill holes, remove small objects, keep the two largest connected components (the two lungs).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from cxr.preprocess import letterbox


def postprocess_mask(mask: np.ndarray, min_fraction: float = 0.005) -> np.ndarray:
    """Clean a binary lung mask.

    Args:
        mask: ``(H, W)`` array, non-zero = lung.
        min_fraction: components smaller than this fraction of the image are removed.

    Returns:
        ``(H, W)`` uint8 mask in ``{0, 1}`` with at most two components, holes filled.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    filled = ndimage.binary_fill_holes(mask > 0)
    labelled, count = ndimage.label(filled)
    if count == 0:
        return filled.astype(np.uint8)
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:2] + 1
    keep = [k for k in keep if sizes[k - 1] >= min_fraction * mask.size]
    return np.isin(labelled, keep).astype(np.uint8)


def lung_fraction(mask: np.ndarray) -> float:
    """Fraction of the image covered by lung."""
    return float(np.count_nonzero(mask)) / float(mask.size)


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask file (0/255 PNG) as a letterboxed ``size`` uint8 mask in ``{0, 1}``.

    Raises:
        ValueError: the file cannot be read as an image.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    return letterbox((mask > 127).astype(np.uint8), size, nearest=True)[0]
