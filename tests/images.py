"""Encoders for test images (PNG/JPEG bytes from arrays), shared by the test modules."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
