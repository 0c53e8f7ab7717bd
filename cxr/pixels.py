"""Decode encoded chest X-rays (DICOM, PNG, JPEG) into one float grayscale array, with validation.

Every path that touches an image (training datasets, the Triton preprocessing model, the CLI) calls
:func:`decode_image`, so a bad file is rejected with the same clear reason everywhere.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_SIDE = 64
MAX_SIDE = 8192
ACCEPTED_MODALITIES = ("CR", "DX")


class ImageError(ValueError):
    """An input that cannot be triaged; the message says what was wrong."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image: ``pixels`` is ``(H, W)`` float32 in the file's own value range (higher = brighter)."""

    pixels: np.ndarray
    format: str
    original_size: tuple[int, int]


def sniff_format(data: bytes) -> str:
    """Name the container format from magic bytes: ``dicom``, ``png`` or ``jpeg``.

    Raises:
        ImageError: empty input or an unrecognised format.
    """
    if len(data) == 0:
        raise ImageError("empty input (0 bytes)")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    raise ImageError(f"unrecognised image format (first bytes {data[:8].hex()}); expected DICOM, PNG or JPEG")


def _check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} px (minimum side {MIN_SIDE} px)")
    if max(height, width) > MAX_SIDE:
        raise ImageError(f"image too large: {width}x{height} px (maximum side {MAX_SIDE} px)")


def decode_image(data: bytes, draft_size: int | None = None) -> Decoded:
    """Decode and validate one encoded image.

    Args:
        data: the file's bytes.
        draft_size: if given, JPEGs may be decoded at a reduced DCT scale whose shorter side is still
            at least this many pixels (much faster, and training uses the same path).

    Returns:
        The decoded image; RGB(A) is converted to luminance, MONOCHROME1 inverted.

    Raises:
        ImageError: the input is empty, truncated, not a radiograph, too small or too large.
    """
    kind = sniff_format(data)
    if kind == "dicom":
        return _decode_dicom(data)
    return _decode_raster(data, kind, draft_size)


def _decode_raster(data: bytes, kind: str, draft_size: int | None) -> Decoded:
    name = kind.upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            _check_size(height, width)
            if kind == "jpeg" and draft_size:
                image.draft("L", (draft_size, draft_size))
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image too large: {name} rejected by the decompression-bomb guard ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt {name}: {exc}") from None
    return Decoded(_to_gray(image), kind, (height, width))


def _to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32)


def _decode_dicom(data: bytes) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError(f"corrupt DICOM: {exc}") from None
    modality = str(ds.get("Modality", "") or "")
    if modality and modality not in ACCEPTED_MODALITIES:
        raise ImageError(f"unsupported modality {modality!r}: only chest radiographs ({', '.join(ACCEPTED_MODALITIES)})")
    if "PixelData" not in ds:
        raise ImageError("DICOM has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(rows, cols)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames) is not supported; send one frame per instance")
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ImageError(f"cannot decode DICOM pixel data (transfer syntax {syntax}): {exc}") from None
    if raw.ndim != 2:
        raise ImageError(f"expected a single grayscale frame, got pixel array of shape {raw.shape}")
    pixels = apply_modality_lut(raw, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        pixels = apply_voi_lut(pixels, ds)
    pixels = np.asarray(pixels, dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return Decoded(pixels, "dicom", (rows, cols))
