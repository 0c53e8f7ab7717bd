"""Decoding: every accepted format decodes the same picture (bad inputs: tests/cxr/test_corpus.py)."""
from __future__ import annotations

import numpy as np
import pytest

from client.dicom_files import make_dicom
from cxr.pixels import decode_image, sniff_format
from tests.images import jpeg_bytes, png_bytes


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def gray(xray_pixels) -> np.ndarray:
    return xray_pixels.astype(np.uint8)


def test_real_jpeg_decodes_to_gray(xray_jpeg):
    decoded = decode_image(xray_jpeg)
    assert decoded.format == "jpeg"
    assert decoded.pixels.ndim == 2 and decoded.pixels.dtype == np.float32
    assert decoded.pixels.max() > decoded.pixels.min()


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda g: png_bytes(g), id="png8"),
        pytest.param(lambda g: png_bytes(g.astype(np.uint16) * 257), id="png16"),
        pytest.param(lambda g: png_bytes(np.stack([g] * 3, -1)), id="png-rgb"),
        pytest.param(lambda g: png_bytes(np.dstack([g, g, g, np.full_like(g, 255)])), id="png-rgba"),
        pytest.param(lambda g: jpeg_bytes(np.stack([g] * 3, -1)), id="jpeg-rgb"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), bits_stored=12), id="dicom-cr-12bit"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), bits_stored=16), id="dicom-cr-16bit"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), bits_stored=8), id="dicom-cr-8bit"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), modality="DX"), id="dicom-dx"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), photometric="MONOCHROME1"), id="dicom-monochrome1"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), rescale=(2.0, -1000.0)), id="dicom-rescale"),
        pytest.param(lambda g: make_dicom(g.astype(np.float32), window=(2048, 4096)), id="dicom-window"),
    ],
)
def test_formats_decode_to_the_same_picture(gray, encode):
    """Bit depth, colour, inversion and LUTs change values, not the picture: correlation with the source stays ~1."""
    decoded = decode_image(encode(gray))
    assert decoded.pixels.shape == gray.shape
    assert _corr(decoded.pixels, gray.astype(np.float32)) > 0.99


def test_monochrome1_is_inverted_back(gray):
    mono1 = decode_image(make_dicom(gray.astype(np.float32), photometric="MONOCHROME1")).pixels
    mono2 = decode_image(make_dicom(gray.astype(np.float32), photometric="MONOCHROME2")).pixels
    assert _corr(mono1, mono2) > 0.999


def test_sniff_format():
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"\0" * 128 + b"DICM") == "dicom"


def test_jpeg_draft_decode_is_close_to_full_decode(xray_jpeg):
    """The fast reduced-scale JPEG decode (used for training and serving alike) keeps the picture."""
    from cxr.preprocess import PrepareInput
    from cxr.specs import CLASSIFIER

    prepare = PrepareInput(CLASSIFIER)
    full = prepare(decode_image(xray_jpeg).pixels)
    draft = prepare(decode_image(xray_jpeg, draft_size=256).pixels)
    assert _corr(full, draft) > 0.99
