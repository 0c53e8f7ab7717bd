"""The result package sent back to the PACS for one triaged image: TID 1500 SR, DICOM SEG, Secondary Capture.

- **SR** (Comprehensive 3D SR, TID 1500 Measurement Report with TID 4019 algorithm identification, as the IHE
  AI Results profile asks): top finding (SNOMED CT) with the CAD processing summary, triage priority and reasons;
  one group per trained label with its probability (DCM "Probability"); the lungs as a segment of the SEG with
  the lung fraction; the model versions, thresholds release and request id as the algorithm's parameters. When
  inference failed, a report whose summary says "no algorithms succeeded" and "AI result unavailable" and why:
  silence must never look like "no finding". :func:`read_sr` reads one back through highdicom.
- **SEG**: the lung mask mapped back from the network's letterboxed frame onto the source pixel grid.
- **Secondary Capture**: the image with the class-activation heatmap and lung outline burnt in, for viewers
  that show neither SR nor SEG.

All three are built with highdicom from the source dataset, so patient/study attributes and references are
copied consistently and the objects validate.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from cxr import __version__
from cxr.labels import LABELS
from cxr.preprocess import letterbox_geometry
from cxr.specs import CAM, LUNG_MASK, LUNG_SEGMENTATION

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
# Concepts without a standard code use this project's private scheme (declared in each SR's Coding Scheme
# Identification Sequence); everything else is DCM or SNOMED CT.
_SCHEME = "99CXRTRIAGE"
CONCEPTS = {
    "status": hd.sr.CodedConcept("CXR-2", _SCHEME, "AI result status"),
    "reason": hd.sr.CodedConcept("CXR-5", _SCHEME, "Triage reason"),
    "lung_fraction": hd.sr.CodedConcept("CXR-9", _SCHEME, "Lung fraction of image"),
}
# Triage priority values (SNOMED CT has no worklist-priority value set that matches urgent/expedited/routine).
PRIORITY_CODES = {
    "urgent": hd.sr.CodedConcept("CXR-P1", _SCHEME, "Urgent"),
    "expedited": hd.sr.CodedConcept("CXR-P2", _SCHEME, "Expedited"),
    "routine": hd.sr.CodedConcept("CXR-P3", _SCHEME, "Routine"),
}
PROCEDURE = codes.SCT.ChestImaging  # 413815006 "Chest imaging (procedure)"
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
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
                   lung_fraction=out.lung_fraction, lung_mask=np.asarray(out.arrays[LUNG_MASK.name][0, 0]),
                   cam=np.asarray(out.arrays[CAM.name][0]), request_id=out.request_id,
                   model_versions=out.triage.get("model_versions", {}))


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


def _algorithm(model_versions: dict[str, str], thresholds: str, request_id: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019: this software, with the model versions, thresholds release and request id as its parameters."""
    parameters = [f"{role} version {version}" for role, version in sorted(model_versions.items())]
    parameters += [f"thresholds {thresholds or '-'}", f"request {request_id or '-'}"]
    return hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=__version__, parameters=parameters,
                                         family=codes.DCM.ArtificialIntelligence, manufacturer=MANUFACTURER)


def _texts(group: Dataset, concept: str, values: list[str]) -> None:
    """Append TEXT rows (TID 1501 is extensible) for what no coded row holds: the triage reasons, a failure."""
    group.ContentSequence.extend(hd.sr.TextContentItem(CONCEPTS[concept], value[:1024],
                                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
                                 for value in values)


def build_sr(source: Dataset, result: Triaged | None, error: str | None = None, request_id: str = "",
             seg: Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report for ``source`` (Comprehensive 3D SR, as IHE AI Results asks).

    A result: one measurement group whose finding (SNOMED CT) is the top finding, with the CAD summary, the
    triage priority and the triage reasons (text); one group per trained label with its probability (DCM "Probability"); one ROI
    group on the lungs that references the SEG's segment (``seg``) and gives the lung fraction. Every group names the
    algorithm (TID 4019). Failed: one group, "no algorithms succeeded", ``AI result unavailable: <why>``.
    """
    sources = [hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)]
    uid = str(source.SOPInstanceUID)
    track = lambda name: hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[uid, name]), identifier=name)  # noqa: E731
    if result is None:
        algorithm = _algorithm({}, "", request_id)
        summary = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=track("AI triage"), algorithm_id=algorithm, source_images=sources,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary,
                                                                 codes.DCM.NoAlgorithmsSucceededWithoutFindings)])
        _texts(summary[0], "status", [f"{UNAVAILABLE}: {error or 'unknown error'}"])
        groups, title = [summary], UNAVAILABLE
    else:
        algorithm = _algorithm(result.model_versions, str(result.triage.get("thresholds_version", "")), result.request_id)
        outcome = (codes.DCM.AllAlgorithmsSucceededWithoutFindings if result.label == "normal"
                   else codes.DCM.AllAlgorithmsSucceededWithFindings)
        summary = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=track("AI triage"), finding_type=FINDING_CODES[result.label], algorithm_id=algorithm,
            source_images=sources,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary, outcome),
                hd.sr.QualitativeEvaluation(codes.SCT.Priority, PRIORITY_CODES[result.triage["priority"]]),
            ])
        _texts(summary[0], "reason", list(result.triage.get("reasons", [])))
        groups = [summary]
        for label, p in result.probabilities.items():
            if p is None:  # untrained label (cxr.labels.UNTRAINED): not reported
                continue
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(f"probability {label}"), finding_type=FINDING_CODES[label],
                algorithm_id=algorithm, source_images=sources,
                measurements=[hd.sr.Measurement(codes.DCM.Probability, float(p), UNITLESS)]))
        if seg is not None:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(  # TID 1411: "ROI = a segment"
                tracking_identifier=track("lungs"), finding_type=codes.SCT.Lung, algorithm_id=algorithm,
                referenced_segment=hd.sr.ReferencedSegment(
                    seg.SOPClassUID, seg.SOPInstanceUID, segment_number=1,
                    source_images=[hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID)]),
                measurements=[hd.sr.Measurement(CONCEPTS["lung_fraction"], float(result.lung_fraction), UNITLESS)]))
        title = f"{result.triage['priority']}: {result.label}"
    observer = hd.sr.ObserverContext(codes.cid270.Device, hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER]), name=MANUFACTURER, manufacturer_name=MANUFACTURER,
        model_name=SOFTWARE))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE, imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    series = _series(source, "sr" if result is not None else "sr-unavailable")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, *([seg] if seg is not None else [])],
        content=report[0],
        series_description=f"AI triage: {title}"[:64],
        manufacturer=series.pop("manufacturer"),
        is_complete=True,
        is_final=False,
        is_verified=False,
        **series,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = _SCHEME, "cxr-triage private codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    return sr


def read_sr(ds: Dataset) -> dict:
    """One of these SRs read back through highdicom's TID 1500 classes (what a viewer or worklist would parse):
    ``image`` (the source instance), ``status`` (``completed`` / ``unavailable``), ``finding``, ``priority``, ``probabilities``, ``reasons``,
    ``lung_fraction``, ``segmentation`` (referenced SEG instance), ``algorithm`` (name, version, parameters)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    summary = groups["AI triage"]
    coded = {q.name.value: q.value for q in summary.get_qualitative_evaluations()}
    texts = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue) for i in summary[0].ContentSequence
             if i.ValueType == "TEXT"]  # TID 4019 rows sit beside ours: Algorithm Name/Version/Parameters
    by_code = lambda code: [t for c, t in texts if c == code]  # noqa: E731
    labels = {c.value: label for label, c in FINDING_CODES.items()}
    failed = coded[codes.DCM.CADProcessingAndFindingsSummary.value] == codes.DCM.NoAlgorithmsSucceededWithoutFindings
    lungs = report.get_volumetric_roi_measurement_groups()
    images = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in summary[0].ContentSequence if i.ValueType == "IMAGE"]
    return {
        "image": str(images[0]),
        "status": "unavailable" if failed else "completed",
        "error": next(iter(by_code(CONCEPTS["status"].value)), None),
        "finding": None if failed else labels[summary.finding_type.value],
        "priority": None if failed else next(k for k, c in PRIORITY_CODES.items() if c == coded[codes.SCT.Priority.value]),
        "reasons": by_code(CONCEPTS["reason"].value),
        "probabilities": {labels[g.finding_type.value]: g.get_measurements()[0].value
                          for name, g in groups.items() if name.startswith("probability ")},
        "lung_fraction": lungs[0].get_measurements()[0].value if lungs else None,
        "segmentation": str(lungs[0].referenced_segment[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if lungs else None,
        "algorithm": {"name": by_code(codes.DCM.AlgorithmName.value)[0], "version": by_code(codes.DCM.AlgorithmVersion.value)[0],
                      "parameters": by_code(codes.DCM.AlgorithmParameters.value)},
    }


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
            name=LUNG_SEGMENTATION.name, version=result.model_versions.get("lung_segmentation", "1"),
            family=codes.DCM.ArtificialIntelligence),
    )
    series = _series(source, "seg")
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_description="AI lung segmentation",
        manufacturer_model_name=LUNG_SEGMENTATION.name,
        software_versions=SOFTWARE,
        device_serial_number="0",
        **series,
    )
    seg.PatientOrientation = source.get("PatientOrientation", "")  # General Image, type 2C (highdicom leaves it out)
    return seg


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
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay(gray, result),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_description="AI triage heatmap",
        patient_orientation=("L", "F"),
        **series,
    )
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"  # an unpaired part: Laterality (2C) not needed
    return sc


# Type-2 attributes of the Patient and General Study modules: required in every result object, but "required,
# may be empty", so real modalities often leave them out. highdicom copies them from the source.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _conforms(keyword: str, value) -> bool:
    """Whether highdicom can copy ``value`` (modalities send e.g. PatientSex ``Unknown`` or ``1990-01-01`` dates)."""
    if value is None or str(value) == "":
        return True
    try:
        if keyword == "PatientSex":
            return str(value) in ("M", "F", "O")
        if keyword in ("StudyDate", "PatientBirthDate"):
            DA(str(value))
        elif keyword == "StudyTime":
            TM(str(value))
    except ValueError:
        return False
    return True


def with_type2(source: Dataset) -> Dataset:
    """``source``, or a copy of it in which each :data:`TYPE2_COPIED` attribute that is absent, or whose value
    does not conform to its VR, is present and empty (the result objects copy them; empty is allowed)."""
    blank = [k for k in TYPE2_COPIED if k not in source or not _conforms(k, source[k].value)]
    if not blank:
        return source
    completed = copy.deepcopy(source)
    for keyword in blank:
        setattr(completed, keyword, None)  # pydicom: an empty value of the keyword's VR
    return completed


def package(source: Dataset, gray: np.ndarray | None, result: Triaged | None, error: str | None = None,
            request_id: str = "") -> list[Dataset]:
    """Everything sent back for one image: SR + SEG + SC, or only the "unavailable" SR (absent type-2
    attributes are copied as empty)."""
    source = with_type2(source)
    if result is None:
        return [build_sr(source, None, error, request_id)]
    seg = build_seg(source, result)
    return [build_sr(source, result, seg=seg), seg, build_sc(source, gray, result)]


def summary(datasets: list[Dataset]) -> str:
    return json.dumps([{"sop_class": str(d.SOPClassUID), "sop_instance": str(d.SOPInstanceUID)} for d in datasets])
