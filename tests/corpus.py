"""The bad-input corpus: files a PACS, a script or a user might send, each with the answer it must get.

Every case is built from one real test-split radiograph (``Source``), so the files that should triage
("a correct result") show the same picture in another container, bit depth, colour model or transfer
syntax, and the ones that must not name their problem in the error. The same corpus goes through the
decoder (``tests/cxr``), the gRPC ensemble (``tests/model_repository``) and the gateway's two entrances,
C-STORE and the upload page (``tests/gateway``).
"""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as uids
from pydicom.encaps import encapsulate

from client.dicom_files import make_dicom
from cxr.pixels import MAX_BYTES


@dataclass(frozen=True)
class Source:
    """The picture every case is made from: 8-bit grayscale pixels and the original JPEG bytes."""

    gray: np.ndarray
    jpeg: bytes


@dataclass(frozen=True)
class Case:
    """One input and what it must get.

    ``error``: a substring of the expected error, or None when the input must decode. ``gate_refuses``: it
    decodes, but the served safety gate refuses it (the substring of that error); :attr:`served_error` is what a
    served request must get (None: it triages). ``same_picture``: a
    triaged case shows the source picture losslessly (or near), so its answer must match the source's.
    ``dicom_dataset``: a parseable DICOM dataset a PACS could send by C-STORE. ``gateway_skip``: the
    gateway's filter skips it as not a chest frontal radiograph (the substring of its reason).
    """

    name: str
    make: Callable[[Source], bytes]
    error: str | None = None
    same_picture: bool = False
    dicom_dataset: bool = False
    gateway_skip: str | None = None
    gate_refuses: str | None = None

    @property
    def served_error(self) -> str | None:
        return self.error or self.gate_refuses


# -- encoders --------------------------------------------------------------------------------------------
def _pil(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims ``width x height`` (the decoder must refuse before allocating)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + _png_chunk(b"IEND", b""))


def _png_bad_crc(s: Source) -> bytes:
    data = bytearray(_pil(s.gray, "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    return bytes(data)


def _jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the JPEG's SOF frame header to claim another size."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        marker = data[i + 1]
        if data[i] == 0xFF and marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    raise ValueError("no SOF marker")


def _jpeg_bitflips(s: Source) -> bytes:
    data = bytearray(s.jpeg)
    rng = np.random.default_rng(7)
    for i in rng.integers(len(data) // 2, len(data) - 10, 40):
        data[i] ^= 0x10 if data[i] != 0xFF and data[i] ^ 0x10 != 0xFF else 0
    return bytes(data)


def _zip(s: Source) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("xray.jpg", s.jpeg)
    return buffer.getvalue()


# -- DICOM -----------------------------------------------------------------------------------------------
def _dataset(s: Source, **kwargs) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(make_dicom(s.gray.astype(np.float32), **kwargs)))


def _write(ds: pydicom.Dataset, **kwargs) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **kwargs)
    return buffer.getvalue()


def _edited(edit: Callable[[pydicom.Dataset], None], **make_kwargs) -> Callable[[Source], bytes]:
    def make(s: Source) -> bytes:
        ds = _dataset(s, **make_kwargs)
        edit(ds)
        return _write(ds)

    return make


def _set(**attributes) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for key, value in attributes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)

    return edit


def _truncate_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]


def _float_pixels_with_nan(ds: pydicom.Dataset) -> None:
    values = ds.pixel_array.astype(np.float32)
    values[100:140, 100:140] = np.nan
    del ds.PixelData
    ds.BitsAllocated = 32
    for key in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, key)
    ds.FloatPixelData = values.tobytes()


def _signed(ds: pydicom.Dataset) -> None:
    ds.PixelRepresentation = 1
    ds.PixelData = (ds.pixel_array.astype(np.int32) - 2048).astype(np.int16).tobytes()


def _rgb(ds: pydicom.Dataset) -> None:
    gray = (ds.pixel_array >> 4).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.stack([gray] * 3, -1).tobytes()


def _compressed(syntax: str) -> Callable[[Source], bytes]:
    """pydicom's own encoders (RLE natively, JPEG-LS with pyjpegls, JPEG 2000 with pylibjpeg-openjpeg)."""
    def make(s: Source) -> bytes:
        ds = _dataset(s, bits_stored=8 if syntax == uids.JPEG2000Lossless else 12)
        ds.compress(syntax)
        return _write(ds)

    return make


def _jpeg_baseline(fragment: Callable[[bytes], bytes] = lambda b: b) -> Callable[[Source], bytes]:
    """A JPEG baseline stream in encapsulated pixel data, as modalities that compress on the wire send."""
    def make(s: Source) -> bytes:
        ds = _dataset(s, bits_stored=8)
        ds.file_meta.TransferSyntaxUID = uids.JPEGBaseline8Bit
        ds.PixelData = encapsulate([fragment(_pil(s.gray, "JPEG", quality=95))])
        ds["PixelData"].VR = "OB"
        return _write(ds)

    return make


def _dcmtk_jpeg_lossless(s: Source) -> bytes:
    """JPEG lossless (process 14, SV1), the usual archive format of CR/DX, encoded by dcmtk's dcmcjpeg."""
    if shutil.which("dcmcjpeg") is None:
        raise RuntimeError("dcmcjpeg (dcmtk) not installed; make setup installs it")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        src.write_bytes(make_dicom(s.gray.astype(np.float32)))
        subprocess.run(["dcmcjpeg", str(src), str(dst)], check=True, capture_output=True)
        return dst.read_bytes()


def _syntax(syntax: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"

    return edit


def _deflated(s: Source) -> bytes:
    ds = _dataset(s)
    ds.file_meta.TransferSyntaxUID = uids.DeflatedExplicitVRLittleEndian
    return _write(ds)


def _without_part10_header(s: Source) -> bytes:
    ds = _dataset(s)
    ds.preamble = None
    del ds.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)  # the dataset alone: no preamble, no meta
    return buffer.getvalue()


def _dicom(name: str, make, error=None, same_picture=False, gateway_skip=None) -> Case:
    return Case(name, make, error, same_picture, dicom_dataset=True, gateway_skip=gateway_skip)


CASES: list[Case] = [
    # not an image we accept
    Case("empty", lambda s: b"", "empty input"),
    Case("random-bytes", lambda s: np.random.default_rng(0).bytes(5000), "unrecognised image format"),
    Case("text", lambda s: b"patient x, chest pa, see attached\n" * 20, "unrecognised image format"),
    Case("html-error-page", lambda s: b"<html><body>502 Bad Gateway</body></html>", "unrecognised image format"),
    Case("pdf", lambda s: b"%PDF-1.7\n" + s.jpeg[:2000], "unsupported image format PDF"),
    Case("gif", lambda s: _pil(s.gray, "GIF"), "unsupported image format GIF"),
    Case("tiff", lambda s: _pil(s.gray, "TIFF"), "unsupported image format TIFF"),
    Case("bmp", lambda s: _pil(s.gray, "BMP"), "unsupported image format BMP"),
    Case("webp", lambda s: _pil(s.gray, "WEBP"), "unsupported image format WebP"),
    Case("jpeg2000-file", lambda s: _pil(s.gray, "JPEG2000"), "unsupported image format JPEG 2000"),
    Case("zip-of-a-jpeg", _zip, "unsupported image format ZIP"),
    Case("oversized-80mb", lambda s: s.jpeg + b"\0" * (MAX_BYTES + 16 * 2**20), "too large"),
    # JPEG
    Case("jpeg-truncated", lambda s: s.jpeg[: len(s.jpeg) // 3], "truncated or corrupt JPEG"),
    Case("jpeg-header-only", lambda s: s.jpeg[:400], "truncated or corrupt JPEG"),
    Case("jpeg-soi-only", lambda s: b"\xff\xd8\xff", "truncated or corrupt JPEG"),
    Case("jpeg-claims-20000px", lambda s: _jpeg_claiming(s.jpeg, 20000, 20000), "too large"),
    Case("jpeg-40px-high", lambda s: _pil(np.full((40, 300), 90, np.uint8), "JPEG"), "too small"),
    Case("jpeg-rgb", lambda s: _pil(np.stack([s.gray] * 3, -1), "JPEG", quality=95), same_picture=True),
    Case("jpeg-cmyk", lambda s: _pil(s.gray, "JPEG", mode="CMYK", quality=95), same_picture=True),
    Case("jpeg-progressive", lambda s: _pil(s.gray, "JPEG", quality=95, progressive=True), same_picture=True),
    Case("jpeg-quality-10", lambda s: _pil(s.gray, "JPEG", quality=10)),
    # libjpeg decodes damaged entropy data without an error: the lower half of the film comes out as shifted,
    # banded blocks, and the safety gate (refitted on the distilled segmenter's masks) refuses what is left
    Case("jpeg-bitflips", _jpeg_bitflips, gate_refuses="not a frontal chest radiograph"),
    # PNG
    Case("png-truncated", lambda s: _pil(s.gray, "PNG")[:2000], "truncated or corrupt PNG"),
    Case("png-signature-only", lambda s: b"\x89PNG\r\n\x1a\n", "truncated or corrupt PNG"),
    Case("png-bad-crc", _png_bad_crc, "truncated or corrupt PNG"),
    Case("png-1x1", lambda s: _pil(np.zeros((1, 1), np.uint8), "PNG"), "too small"),
    Case("png-claims-20000px", lambda s: _png_claiming(20000, 20000), "too large"),
    Case("png-8200px-wide", lambda s: _pil(np.tile(s.gray[:64, :1], (1, 8200)), "PNG"), "too large"),
    Case("png-blank", lambda s: _pil(np.zeros((512, 512), np.uint8), "PNG"), "blank image"),
    Case("png-16bit", lambda s: _pil(s.gray.astype(np.uint16) * 257, "PNG"), same_picture=True),
    Case("png-rgb", lambda s: _pil(np.stack([s.gray] * 3, -1), "PNG"), same_picture=True),
    Case("png-rgba", lambda s: _pil(np.dstack([s.gray] * 3 + [np.full_like(s.gray, 255)]), "PNG"), same_picture=True),
    Case("png-gray-alpha", lambda s: _pil(s.gray, "PNG", mode="LA"), same_picture=True),
    Case("png-palette", lambda s: _pil(s.gray, "PNG", mode="P"), same_picture=True),
    # DICOM: container damage (not a dataset a PACS can send)
    Case("dicom-truncated-header", lambda s: make_dicom(s.gray.astype(np.float32))[:3000], "DICOM"),
    Case("dicom-preamble-only", lambda s: b"\0" * 128 + b"DICM", "DICOM has no pixel data"),
    Case("dicom-without-part10-header", _without_part10_header, "without a Part 10 header"),
    Case("dicom-private-transfer-syntax", _edited(_syntax("1.2.826.0.1.3680043.8.498.9999")),
         "unsupported transfer syntax"),
    # DICOM datasets, as a PACS sends them
    _dicom("dicom-pixels-truncated", _edited(_truncate_pixels), "cannot decode DICOM pixel data"),
    # refused by their tags (cxr.acceptance, the same rule at the gateway): not a CR/DX frontal chest image
    _dicom("dicom-ct", lambda s: make_dicom(s.gray.astype(np.float32), modality="CT"), "modality CT is not CR/DX",
           gateway_skip="modality CT"),
    _dicom("dicom-mr", lambda s: make_dicom(s.gray.astype(np.float32), modality="MR"), "modality MR is not CR/DX",
           gateway_skip="modality MR"),
    _dicom("dicom-no-modality", _edited(_set(Modality=None)), "modality missing is not CR/DX",
           gateway_skip="modality missing"),
    _dicom("dicom-abdomen", _edited(_set(BodyPartExamined="ABDOMEN")), "body part ABDOMEN is not chest",
           gateway_skip="body part"),
    _dicom("dicom-knee", _edited(_set(BodyPartExamined="KNEE")), "body part KNEE is not chest", gateway_skip="body part"),
    _dicom("dicom-lateral", _edited(_set(ViewPosition="LL")), "view position LL is not frontal",
           gateway_skip="view position"),
    # body part and view position are optional (type 2/3): absent or empty, the pixels decide
    _dicom("dicom-no-body-part-or-view", _edited(_set(BodyPartExamined=None, ViewPosition=None)), same_picture=True),
    _dicom("dicom-empty-view", _edited(_set(ViewPosition="")), same_picture=True),
    # real modalities leave out type-2 attributes (required, may be empty): a result all the same
    _dicom("dicom-no-study-type2", _edited(_set(StudyDate=None, StudyTime=None, AccessionNumber=None, StudyID=None,
                                                ReferringPhysicianName=None)), same_picture=True),
    _dicom("dicom-no-patient-type2", _edited(_set(PatientName=None, PatientID=None, PatientBirthDate=None,
                                                  PatientSex=None)), same_picture=True),
    _dicom("dicom-odd-type2-values", _edited(_set(PatientSex="Unknown", StudyDate="2026-12-01", StudyTime="25:99")),
           same_picture=True),
    _dicom("dicom-multiframe", lambda s: make_dicom(s.gray.astype(np.float32), frames=3), "multi-frame"),
    _dicom("dicom-no-pixel-data", _edited(_set(PixelData=None)), "no pixel data"),
    _dicom("dicom-claims-20000px", _edited(_set(Rows=20000, Columns=20000)), "too large"),
    _dicom("dicom-32px", lambda s: make_dicom(s.gray[::16, ::16].astype(np.float32)), "too small"),
    _dicom("dicom-blank", lambda s: make_dicom(np.zeros((512, 512), np.float32)), "blank image"),
    _dicom("dicom-float-pixels-nan", _edited(_float_pixels_with_nan), "non-finite"),
    _dicom("dicom-rescale-overflow", _edited(_set(RescaleSlope="1e38", RescaleIntercept="0")), "non-finite"),
    _dicom("dicom-8bit", lambda s: make_dicom(s.gray.astype(np.float32), bits_stored=8), same_picture=True),
    _dicom("dicom-16bit", lambda s: make_dicom(s.gray.astype(np.float32), bits_stored=16), same_picture=True),
    _dicom("dicom-signed-16bit", _edited(_signed), same_picture=True),
    _dicom("dicom-monochrome1", lambda s: make_dicom(s.gray.astype(np.float32), photometric="MONOCHROME1"),
           same_picture=True),
    _dicom("dicom-rgb", _edited(_rgb), same_picture=True),
    _dicom("dicom-voi-window", lambda s: make_dicom(s.gray.astype(np.float32), window=(2048, 4096)), same_picture=True),
    _dicom("dicom-deflated", _deflated, same_picture=True),
    _dicom("dicom-jpeg-baseline", _jpeg_baseline(), same_picture=True),
    _dicom("dicom-jpeg-lossless-dcmtk", _dcmtk_jpeg_lossless, same_picture=True),
    _dicom("dicom-jpeg-ls", _compressed(uids.JPEGLSLossless), same_picture=True),
    _dicom("dicom-jpeg2000-lossless", _compressed(uids.JPEG2000Lossless), same_picture=True),
    _dicom("dicom-rle", _compressed(uids.RLELossless), same_picture=True),
    _dicom("dicom-jpeg-fragment-truncated", _jpeg_baseline(lambda b: b[: len(b) // 4]), "cannot decode DICOM pixel data"),
    _dicom("dicom-mpeg2-video", _edited(_syntax(uids.MPEG2MPML)), "unsupported transfer syntax"),
]


def build(source: Source) -> dict[str, bytes]:
    """Every case's bytes, by name."""
    return {case.name: case.make(source) for case in CASES}
