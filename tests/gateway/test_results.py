"""The result package (SR + SEG + SC) is valid DICOM, references the source, and the SEG lands on the lungs."""
from __future__ import annotations

import io

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedSRStorage

from client.dicom_files import make_dicom
from client.gateway.results import UNAVAILABLE, Triaged, package, to_source_frame
from cxr.labels import LABELS, reported_probabilities
from cxr.pixels import decode_image


def _content(ds) -> list:
    items = []
    for item in ds.ContentSequence:
        items.append(item)
        items.extend(getattr(item, "ContentSequence", []))
    return items


@pytest.fixture(scope="module")
def case(repository, test_rows):
    """A real test CXR as a CR DICOM, its ground-truth mask, and the served models' answer for it."""
    from client.local_pipeline import LocalPipeline

    row = next(r for r in test_rows if r.mask is not None)
    pixels = decode_image(row.image.read_bytes()).pixels
    data = make_dicom(pixels)
    pipeline = LocalPipeline(repository)
    seg_in, cls_in = pipeline.prepare([data])
    raw = pipeline.segment(seg_in)
    probs, cam = pipeline.cls.run(["probabilities", "cam"], {"cls_image": cls_in, "lung_mask": raw})
    local = pipeline.route(probs, cam, raw, cls_in)[0]
    result = Triaged(label=local.triage["top_finding"], probabilities=reported_probabilities(probs[0]),
                     triage=local.triage, lung_fraction=local.lung_fraction, lung_mask=local.lung_mask, cam=cam[0],
                     request_id="req-1", model_versions=local.triage["model_versions"])
    truth = (cv2.imread(str(row.mask), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    return pydicom.dcmread(io.BytesIO(data)), decode_image(data).pixels, result, truth


def _roundtrip(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_sr_carries_the_result_and_references_the_image(case):
    source, gray, result, _ = case
    sr = _roundtrip(package(source, gray, result)[0])
    assert sr.SOPClassUID == EnhancedSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = _content(sr)
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert result.triage["priority"] in texts and "req-1" in texts
    assert any(result.triage["thresholds_version"] == t for t in texts)
    assert any(t.startswith("lung_segmentation: ") for t in texts)
    finding = [i for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
    assert finding[0].ConceptCodeSequence[0].CodeMeaning.lower().startswith(
        {"normal": "normal", "bacterial": "bacterial", "viral": "viral", "covid": "covid", "tb": "tuberculosis"}[result.label])
    probs = [float(i.MeasuredValueSequence[0].NumericValue) for i in items
             if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeMeaning == "Class probability"]
    trained = [k for k in LABELS if result.probabilities[k] is not None]
    assert "tb" not in trained  # an untrained label is not reported as a probability
    assert probs == pytest.approx([result.probabilities[k] for k in trained], abs=1e-4)


def test_seg_matches_the_source_geometry_and_the_lungs(case):
    source, gray, result, truth = case
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(package(source, gray, result)[1]))
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = seg.pixel_array.reshape(source.Rows, source.Columns).astype(bool)
    inter, union = np.logical_and(pixels, truth).sum(), np.logical_or(pixels, truth).sum()
    assert inter / union >= 0.85, "the SEG must land on the real lungs at the source resolution"


def test_sc_is_the_overlay_in_the_same_study(case):
    source, gray, result, _ = case
    sc = _roundtrip(package(source, gray, result)[2])
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PhotometricInterpretation == "RGB"
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    rgb = sc.pixel_array
    assert rgb.shape == (source.Rows, source.Columns, 3) and rgb.std() > 10


def test_failed_inference_gives_an_unavailable_sr_with_the_reason(case):
    source, _, _, _ = case
    objects = package(source, None, None, error="inference unavailable: deadline exceeded", request_id="req-2")
    assert len(objects) == 1
    texts = [i.TextValue for i in _content(_roundtrip(objects[0])) if i.ValueType == "TEXT"]
    assert f"{UNAVAILABLE}: inference unavailable: deadline exceeded" in texts and "req-2" in texts


def test_result_uids_are_stable_so_a_resend_does_not_duplicate(case):
    source, gray, result, _ = case
    first = [str(d.SOPInstanceUID) for d in package(source, gray, result)]
    again = [str(d.SOPInstanceUID) for d in package(source, gray, result)]
    assert first == again and len(set(first)) == 3
    unavailable = str(package(source, None, None, error="x")[0].SOPInstanceUID)
    assert unavailable not in first  # a later real result is not hidden behind an earlier failure


def test_letterbox_is_undone_exactly():
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, :] = 1  # content of a 2:1 landscape image letterboxed into 256 x 256
    back = to_source_frame(mask, 100, 200)
    assert back.shape == (100, 200) and back.all()
