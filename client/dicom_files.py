"""Build DICOM files from pixel arrays (samples, tests, and gateways that wrap plain images)."""
from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

_SOP_CLASS = {"CR": ComputedRadiographyImageStorage, "DX": "1.2.840.10008.5.1.4.1.1.1.1", "CT": CTImageStorage, "MR": MRImageStorage}


def make_dicom(
    pixels: np.ndarray,
    modality: str = "CR",
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
) -> bytes:
    """Encode ``pixels`` ``(H, W)`` (any range) as an uncompressed single- or multi-frame DICOM file.

    Args:
        pixels: grayscale image, higher = brighter.
        modality: CR, DX, CT or MR (SOP class follows).
        bits_stored: 8..16; pixels are scaled to that range (16-bit container above 8).
        photometric: ``MONOCHROME2`` or ``MONOCHROME1`` (stored inverted, so it displays the same).
        rescale: optional ``(slope, intercept)``.
        window: optional ``(center, width)`` VOI window.
        frames: number of frames (copies) for multi-frame files.
    """
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = (pixels - lo) / max(hi - lo, 1e-6) * (2**bits_stored - 1)
    if photometric == "MONOCHROME1":
        scaled = (2**bits_stored - 1) - scaled
    dtype = np.uint8 if bits_stored == 8 else np.uint16
    stored = np.round(scaled).astype(dtype)
    if frames > 1:
        stored = np.stack([stored] * frames)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName, ds.PatientID = "Demo^Anonymous", "ANON0001"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261122", "120000", "", "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
