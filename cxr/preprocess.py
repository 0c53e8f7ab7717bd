"""Resize, letterbox and normalise: the only copy, used by training datasets and the Triton preprocess model."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr.pixels import decode_image
from cxr.specs import ModelSpec


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits inside the square network input.

    ``scale`` maps original pixels to network pixels; ``top``/``left`` are the padding offsets and
    ``height``/``width`` the size of the image content inside the input.
    """

    scale: float
    top: int
    left: int
    height: int
    width: int


def letterbox_geometry(height: int, width: int, size: tuple[int, int]) -> Letterbox:
    """Compute the aspect-preserving fit of an ``height x width`` image into ``size`` ``(H, W)``."""
    scale = min(size[0] / height, size[1] / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return Letterbox(scale, (size[0] - new_h) // 2, (size[1] - new_w) // 2, new_h, new_w)


def letterbox(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Resize ``array`` ``(H, W)`` keeping its aspect ratio and zero-pad it to ``size``.

    Args:
        array: image or mask, ``(H, W)``.
        size: output ``(H, W)``.
        nearest: nearest-neighbour interpolation (for masks); area/linear otherwise.

    Returns:
        The ``size``-shaped array (same dtype) and its :class:`Letterbox` geometry.
    """
    box = letterbox_geometry(array.shape[0], array.shape[1], size)
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if box.scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(array, (box.width, box.height), interpolation=interp)
    out = np.zeros(size, dtype=array.dtype)
    out[box.top : box.top + box.height, box.left : box.left + box.width] = resized
    return out, box


def scale_to_unit(pixels: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` so 8-bit, 12-bit and 16-bit inputs land on the same range."""
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi - lo < 1e-6:
        return np.zeros_like(pixels, dtype=np.float32)
    return ((pixels - lo) / (hi - lo)).astype(np.float32)


class PrepareInput:
    """Turn a decoded grayscale image into a network input ``(1, H, W)`` float32 for one model spec."""

    def __init__(self, spec: ModelSpec) -> None:
        self.size = spec.input_size
        self.mean = spec.mean
        self.std = spec.std

    def unit(self, pixels: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterboxed ``(H, W)`` image in ``[0, 1]``, before normalisation (what augmentation works on)."""
        boxed, box = letterbox(pixels.astype(np.float32, copy=False), self.size)
        inner = boxed[box.top : box.top + box.height, box.left : box.left + box.width]
        boxed[box.top : box.top + box.height, box.left : box.left + box.width] = scale_to_unit(inner)
        return boxed, box

    def normalise(self, unit: np.ndarray) -> np.ndarray:
        """``(H, W)`` in ``[0, 1]`` -> ``(1, H, W)`` normalised float32."""
        return ((unit - self.mean) / self.std).astype(np.float32)[None]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.normalise(self.unit(pixels)[0])


def prepare_bytes(data: bytes, specs: tuple[ModelSpec, ...]) -> tuple[np.ndarray, ...]:
    """Decode ``data`` once and prepare one input per spec (the serving path, also used by tests)."""
    draft = max(max(s.input_size) for s in specs)
    decoded = decode_image(data, draft_size=draft)
    return tuple(PrepareInput(s)(decoded.pixels) for s in specs)
