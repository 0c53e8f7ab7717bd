"""Lung-mask post-processing from the MANet paper (Xu et al., 2021, Sec. 3.1).

Fill holes, remove small objects, keep the two largest connected components (the two lungs).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cxr.preprocess import letterbox


def postprocess_mask(mask: np.ndarray, min_fraction: float = 0.005) -> np.ndarray:
    """Clean a binary lung mask.

    Connected components are 4-connected (scipy.ndimage's default structure), for the lungs and for the holes
    (background not 4-connected to the image border). Of two components of equal size the one that starts
    first in raster order ranks first. OpenCV's flood fill and labelling, not ``scipy.ndimage``: the same mask,
    ~5x faster (2.0 -> 0.37 ms per 256 px mask on an Intel Xeon, Emerald Rapids; it runs for every served
    study, inside the router).

    Args:
        mask: ``(H, W)`` array, non-zero = lung.
        min_fraction: components smaller than this fraction of the image are removed.

    Returns:
        ``(H, W)`` uint8 mask in ``{0, 1}`` with at most two components, holes filled.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    lungs = (mask > 0).astype(np.uint8)
    filled = _fill_holes(lungs)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=4)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    largest = np.argsort(-sizes, kind="stable")[:2]
    keep = np.zeros(count, dtype=bool)
    keep[largest[sizes[largest] >= min_fraction * mask.size] + 1] = True
    return keep[labels].astype(np.uint8)


def _fill_holes(lungs: np.ndarray) -> np.ndarray:
    """``lungs`` ``(H, W)`` uint8 with its holes (background not 4-connected to the image border) filled."""
    h, w = lungs.shape
    framed = np.zeros((h + 2, w + 2), dtype=np.uint8)  # a background frame joins every border pixel
    framed[1:-1, 1:-1] = lungs
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)  # background reachable from outside -> 2
    return (framed[1:-1, 1:-1] != 2).astype(np.uint8)


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
