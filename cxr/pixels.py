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

from cxr.acceptance import tag_refusal
from cxr.errors import CxrError

MIN_SIDE = 64
MAX_SIDE = 8192
MAX_BYTES = 64 * 2**20  # encoded size; a CR/DX file is rarely above 30 MB
NOT_FRONTAL_CHEST = "not a frontal chest radiograph"


REJECTION_KINDS = ("empty", "too_large", "too_small", "not_a_radiograph", "unsupported", "blank", "invalid_pixels",
                   "corrupt")
"""Coarse kinds of refusal (the metrics' labels); the message stays the detail."""


class ImageError(CxrError, ValueError):
    """An input that cannot be triaged; the message says what was wrong, ``kind`` (one of
    :data:`REJECTION_KINDS`) which sort of wrong it is (``corrupt``: truncated or undecodable)."""

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        if kind not in REJECTION_KINDS:
            raise ValueError(f"unknown rejection kind {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Decoded:
    """A decoded image: ``pixels`` is ``(H, W)`` float32 in the file's own value range (higher = brighter)."""

    pixels: np.ndarray
    format: str
    original_size: tuple[int, int]


# Formats we recognise only to name them in the error (a PACS or a user sent the wrong kind of file).
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
    (b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 (JP2)"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"),
)


def check_encoded_size(n_bytes: int) -> None:
    """Refuse an encoded input above :data:`MAX_BYTES` (clients check before sending, the server again)."""
    if n_bytes > MAX_BYTES:
        raise ImageError(f"input too large: {n_bytes:,} bytes (maximum {MAX_BYTES // 2**20} MiB)", "too_large")


def sniff_format(data: bytes) -> str:
    """Name the container format from magic bytes: ``dicom``, ``png`` or ``jpeg``.

    Raises:
        ImageError: empty or oversized input, or a format we do not accept (named when we know it).
    """
    if len(data) == 0:
        raise ImageError("empty input (0 bytes)", "empty")
    check_encoded_size(len(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise ImageError("unsupported image format WebP; send DICOM, PNG or JPEG", "unsupported")
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            raise ImageError(f"unsupported image format {name}; send DICOM, PNG or JPEG", "unsupported")
    if data[:2] in (b"\x08\x00", b"\x02\x00") and data[2:4] in (b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x10\x00", b"\x16\x00"):
        raise ImageError("DICOM without a Part 10 header (no 'DICM' at byte 128); send the file as a PACS stores it",
                         "unsupported")
    raise ImageError(f"unrecognised image format (first bytes {data[:8].hex()}); expected DICOM, PNG or JPEG",
                     "unsupported")


def _check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} px (minimum side {MIN_SIDE} px)", "too_small")
    if max(height, width) > MAX_SIDE:
        raise ImageError(f"image too large: {width}x{height} px (maximum side {MAX_SIDE} px)", "too_large")


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
        raise ImageError(f"image too large: {name} rejected by the decompression-bomb guard ({exc})",
                         "too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        detail = "cannot identify the image" if "cannot identify image file" in str(exc) else str(exc)
        raise ImageError(f"truncated or corrupt {name}: {detail}") from None
    return Decoded(_checked(_to_gray(image)), kind, (height, width))


def _checked(pixels: np.ndarray) -> np.ndarray:
    """Refuse pixel values no radiograph has: NaN/Inf, or one value everywhere (a blank frame)."""
    if not np.isfinite(pixels).all():
        raise ImageError("non-finite pixel values (NaN or Inf)", "invalid_pixels")
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi == lo:
        raise ImageError(f"blank image: every pixel has the value {lo:g}", "blank")
    return pixels


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

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        return _dicom_pixels(ds)
    except ImageError:
        raise
    except Exception as exc:  # pydicom reads elements lazily and raises many types for broken files
        raise ImageError(f"corrupt DICOM: {type(exc).__name__}: {exc}") from None


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dicom_pixels(ds) -> Decoded:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageError("DICOM has no pixel data")
    refusal = tag_refusal(ds)
    if refusal is not None:
        raise ImageError(f"{NOT_FRONTAL_CHEST} ({refusal})", "not_a_radiograph")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(rows, cols)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames) is not supported; send one frame per instance",
                         "unsupported")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    _check_decodable(syntax)
    if syntax is not None and syntax.is_compressed:
        _check_complete_frame(ds, syntax)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        name = getattr(syntax, "name", syntax) or "unknown"
        raise ImageError(f"cannot decode DICOM pixel data (transfer syntax {name}): {exc}") from None
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and int(ds.get("SamplesPerPixel", 1)) > 1:
        raw = _luminance(raw[..., :3])  # colour radiographs exist (rarely); pydicom already converted YBR to RGB
    if raw.ndim != 2:
        raise ImageError(f"expected a single grayscale frame, got pixel array of shape {raw.shape}")
    if "PixelData" in ds:  # float pixel data carries real values already; no modality/VOI LUT applies
        raw = apply_modality_lut(raw, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            raw = apply_voi_lut(raw, ds)
    with np.errstate(invalid="ignore", over="ignore"):
        pixels = np.asarray(raw, dtype=np.float32)
    pixels = _checked(pixels)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return Decoded(pixels, "dicom", (rows, cols))


def _check_decodable(syntax) -> None:
    """Name an unsupported or undecodable transfer syntax before trying (pydicom's own error is long)."""
    from pydicom.pixels import get_decoder

    if syntax is None:
        return  # pydicom guesses from the dataset
    if not getattr(syntax, "is_transfer_syntax", False):
        raise ImageError(f"unsupported transfer syntax {syntax!s}: not a DICOM image transfer syntax", "unsupported")
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise ImageError(f"unsupported transfer syntax {syntax.name} ({syntax!s}): no decoder installed", "unsupported")


def _check_complete_frame(ds, syntax) -> None:
    """A JPEG-family frame must end with its end-of-image marker; decoders fill a cut one with grey silently."""
    from pydicom import uid
    from pydicom.encaps import generate_frames

    if syntax not in (*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes, *uid.JPEG2000TransferSyntaxes):
        return
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"").rstrip(b"\x00")
    if not frame.endswith(b"\xff\xd9"):
        raise ImageError(f"cannot decode DICOM pixel data (transfer syntax {syntax.name}): "
                         "truncated frame (no end-of-image marker)")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
