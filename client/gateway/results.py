"""The result package sent back to the PACS for one triaged image: Enhanced SR, DICOM SEG, Secondary Capture.

- **Enhanced SR**: finding (SNOMED CT), per-class probabilities, triage priority and reasons, model names and
  versions, thresholds version and request id, referencing the source image. When inference failed, an SR
  that says "AI result unavailable" and why: silence must never look like "no finding".
- **SEG**: the lung mask mapped back from the network's letterboxed frame onto the source pixel grid.
- **Secondary Capture**: the image with the class-activation heatmap and lung outline burnt in, for viewers
  that show neither SR nor SEG.

All three are built with highdicom from the source dataset, so patient/study attributes and references are
copied consistently and the objects validate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr.labels import LABELS
from cxr.preprocess import letterbox_geometry

MANUFACTURER = "cxr-triage"
SOFTWARE = "cxr-triage gateway"
SERIES_NUMBERS = {"sr": 9001, "sr-unavailable": 9001, "seg": 9002, "sc": 9003}

# SNOMED CT findings for the five labels.
FINDING_CODES = {
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "bacterial": hd.sr.CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "viral": hd.sr.CodedConcept("75570004", "SCT", "Viral pneumonia"),
    "covid": hd.sr.CodedConcept("840539006", "SCT", "COVID-19"),
    "tb": hd.sr.CodedConcept("56717001", "SCT", "Tuberculosis"),
}
# Concepts without a standard code use this project's private scheme.
_SCHEME = "99CXRTRIAGE"
CONCEPTS = {
    "report": hd.sr.CodedConcept("CXR-1", _SCHEME, "Chest X-ray AI triage"),
    "status": hd.sr.CodedConcept("CXR-2", _SCHEME, "AI result status"),
    "priority": hd.sr.CodedConcept("CXR-3", _SCHEME, "Triage priority"),
    "probability": hd.sr.CodedConcept("CXR-4", _SCHEME, "Class probability"),
    "reason": hd.sr.CodedConcept("CXR-5", _SCHEME, "Triage reason"),
    "model": hd.sr.CodedConcept("CXR-6", _SCHEME, "Model version"),
    "thresholds": hd.sr.CodedConcept("CXR-7", _SCHEME, "Thresholds version"),
    "request": hd.sr.CodedConcept("CXR-8", _SCHEME, "Request identifier"),
    "lung_fraction": hd.sr.CodedConcept("CXR-9", _SCHEME, "Lung fraction of image"),
}
UNAVAILABLE = "AI result unavailable"


@dataclass
class Triaged:
    """What the ensemble returned for one image (see :class:`client.grpc_client.TriageOutput`)."""

    label: str
    probabilities: dict[str, float | None]  # None: untrained label, left out of the SR
    triage: dict
    lung_fraction: float
    lung_mask: np.ndarray  # (256, 256) uint8 in the letterboxed network frame
    cam: np.ndarray  # (classes, h, w) class-activation maps in the same frame
    request_id: str
    model_versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_output(cls, out) -> "Triaged":
        """From a :class:`client.grpc_client.TriageOutput` fetched with ``lung_mask`` and ``cam``."""
        return cls(label=out.label, probabilities={k: out.probabilities[k] for k in LABELS}, triage=out.triage,
                   lung_fraction=out.lung_fraction, lung_mask=np.asarray(out.arrays["lung_mask"][0, 0]),
                   cam=np.asarray(out.arrays["cam"][0]), request_id=out.request_id,
                   model_versions=out.triage.get("model_versions", {}))


def _text(concept: str, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(CONCEPTS[concept], value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def result_uids(source_uid: str, kind: str) -> tuple[str, str]:
    """``(series, instance)`` UIDs of a result object, derived from the source instance.

    Deterministic, so re-processing an image (a resend, or a crash between sending and recording) stores
    the same instances again, which the PACS treats as the same object: one result package per image.
    """
    return (generate_uid(entropy_srcs=[source_uid, kind, "series"]), generate_uid(entropy_srcs=[source_uid, kind]))


def _series(source: Dataset, kind: str) -> dict:
    series_uid, instance_uid = result_uids(str(source.SOPInstanceUID), kind)
    return {"series_instance_uid": series_uid, "series_number": SERIES_NUMBERS[kind],
            "sop_instance_uid": instance_uid, "instance_number": 1, "manufacturer": MANUFACTURER}


def build_sr(source: Dataset, result: Triaged | None, error: str | None = None, request_id: str = "") -> hd.sr.EnhancedSR:
    """The Enhanced SR for ``source``: the triage result, or ``AI result unavailable`` with ``error``."""
    items = []
    image = hd.sr.ImageContentItem(
        hd.sr.CodedConcept("121112", "DCM", "Source of Measurement"),
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items.append(image)
    if result is None:
        items.append(_text("status", f"{UNAVAILABLE}: {error or 'unknown error'}"))
        items.append(_text("request", request_id or "-"))
        title = UNAVAILABLE
    else:
        items.append(_text("status", "completed"))
        items.append(hd.sr.CodeContentItem(codes.DCM.Finding, FINDING_CODES[result.label],
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        items.append(_text("priority", result.triage["priority"]))
        for reason in result.triage.get("reasons", []):
            items.append(_text("reason", reason))
        for label, p in result.probabilities.items():
            if p is None:  # untrained label (cxr.labels.UNTRAINED): not reported
                continue
            num = hd.sr.NumContentItem(CONCEPTS["probability"], float(p), hd.sr.CodedConcept("1", "UCUM", "no units"),
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            num.ContentSequence = [hd.sr.CodeContentItem(codes.DCM.Finding, FINDING_CODES[label],
                                                         relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)]
            items.append(num)
        items.append(hd.sr.NumContentItem(CONCEPTS["lung_fraction"], float(result.lung_fraction),
                                          hd.sr.CodedConcept("1", "UCUM", "no units"),
                                          relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        for role, version in sorted(result.model_versions.items()):
            items.append(_text("model", f"{role}: {version}"))
        items.append(_text("thresholds", str(result.triage.get("thresholds_version", ""))))
        items.append(_text("request", result.request_id))
        title = f"{result.triage['priority']}: {result.label}"
    root = hd.sr.ContainerContentItem(CONCEPTS["report"], template_id=None)
    root.ContentSequence = items
    series = _series(source, "sr" if result is not None else "sr-unavailable")
    return hd.sr.EnhancedSR(
        evidence=[source],
        content=root,
        series_description=f"AI triage: {title}"[:64],
        manufacturer=series.pop("manufacturer"),
        is_complete=True,
        is_final=False,
        is_verified=False,
        **series,
    )


def to_source_frame(mask: np.ndarray, rows: int, columns: int, nearest: bool = True) -> np.ndarray:
    """Undo the letterbox: a map in the network frame -> the source image's ``(rows, columns)`` grid."""
    box = letterbox_geometry(rows, columns, mask.shape[-2:])
    inner = mask[box.top : box.top + box.height, box.left : box.left + box.width]
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(inner, (columns, rows), interpolation=interp)


def build_seg(source: Dataset, result: Triaged) -> hd.seg.Segmentation:
    """Binary DICOM SEG of the lungs on the source image's grid."""
    mask = to_source_frame(result.lung_mask.astype(np.uint8), source.Rows, source.Columns).astype(bool)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lungs",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Lung,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="lung_resunet18", version=result.model_versions.get("lung_segmentation", "1"),
            family=codes.DCM.ArtificialIntelligence),
    )
    series = _series(source, "seg")
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_description="AI lung segmentation",
        manufacturer_model_name="lung_resunet18",
        software_versions=SOFTWARE,
        device_serial_number="0",
        **series,
    )


def overlay(gray: np.ndarray, result: Triaged) -> np.ndarray:
    """RGB image: the top class's activation map as a heatmap over ``gray``, lung outline in green."""
    rows, columns = gray.shape
    unit = cv2.normalize(gray.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    cam = result.cam[list(result.probabilities).index(result.label)]
    cam = cv2.resize(cam.astype(np.float32), result.lung_mask.shape[::-1], interpolation=cv2.INTER_LINEAR)
    heat = to_source_frame(cam, rows, columns, nearest=False)
    heat = cv2.normalize(heat, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    colored = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    base = cv2.cvtColor(unit, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(base, 0.6, colored, 0.4, 0)
    lungs = to_source_frame(result.lung_mask.astype(np.uint8), rows, columns)
    contours, _ = cv2.findContours(lungs, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(blended, contours, -1, (0, 255, 0), max(1, rows // 256))
    text = f"AI triage {result.triage['priority'].upper()}: {result.label} {result.probabilities[result.label]:.2f}"
    cv2.putText(blended, text, (8, max(20, rows // 25)), cv2.FONT_HERSHEY_SIMPLEX, max(0.5, rows / 1000),
                (255, 255, 255), max(1, rows // 400), cv2.LINE_AA)
    cv2.putText(blended, "NOT FOR DIAGNOSIS", (8, rows - 10), cv2.FONT_HERSHEY_SIMPLEX, max(0.4, rows / 1400),
                (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)


def build_sc(source: Dataset, gray: np.ndarray, result: Triaged) -> hd.sc.SCImage:
    """Secondary Capture of :func:`overlay`, in the source's study."""
    series = _series(source, "sc")
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay(gray, result),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_description="AI triage heatmap",
        patient_orientation=("L", "F"),
        **series,
    )


def package(source: Dataset, gray: np.ndarray | None, result: Triaged | None, error: str | None = None,
            request_id: str = "") -> list[Dataset]:
    """Everything sent back for one image: SR + SEG + SC, or only the "unavailable" SR."""
    if result is None:
        return [build_sr(source, None, error, request_id)]
    return [build_sr(source, result), build_seg(source, result), build_sc(source, gray, result)]


def summary(datasets: list[Dataset]) -> str:
    return json.dumps([{"sop_class": str(d.SOPClassUID), "sop_instance": str(d.SOPInstanceUID)} for d in datasets])
