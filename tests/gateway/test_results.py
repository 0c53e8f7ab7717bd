"""The result package (SR + SEG + SC) is valid DICOM, references the source, and the SEG lands on the lungs."""
from __future__ import annotations

import io
import shutil
import subprocess

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from client.dicom_files import make_dicom
from gateway.results import TYPE2_COPIED, UNAVAILABLE, Triaged, package, read_sr, to_source_frame
from cxr.labels import LABELS, reported_probabilities
from cxr.pixels import decode_image


@pytest.fixture(scope="module")
def case(repository, test_rows):
    """A real test CXR as a CR DICOM, its ground-truth mask, and the served models' answer for it."""
    from cxr.pipeline import LocalPipeline

    row = next(r for r in test_rows if r.mask is not None)
    pixels = decode_image(row.image.read_bytes()).pixels
    data = make_dicom(pixels)
    pipeline = LocalPipeline(repository)
    seg_in, cls_in = pipeline.prepare([data])
    raw = pipeline.segment(seg_in)
    probs, cam = pipeline.classify(cls_in, raw)
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


def test_sr_is_a_tid1500_report_of_the_result(case):
    source, gray, result, _ = case
    sr_obj, seg, _ = package(source, gray, result)
    sr = _roundtrip(sr_obj)
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    read = read_sr(sr)  # through highdicom's MeasurementReport classes
    assert read["image"] == source.SOPInstanceUID and read["status"] == "completed"
    assert read["finding"] == result.label and read["priority"] == result.triage["priority"]
    assert read["reasons"] == result.triage["reasons"]
    assert read["segmentation"] == seg.SOPInstanceUID  # the lung ROI group references the SEG's segment
    assert read["lung_fraction"] == pytest.approx(result.lung_fraction)
    params = read["algorithm"]["parameters"]
    assert f"thresholds {result.triage['thresholds_version']}" in params and "request req-1" in params
    assert any(p.startswith("lung_segmentation version ") for p in params)
    trained = [k for k in LABELS if result.probabilities[k] is not None]
    assert "tb" not in trained and list(read["probabilities"]) == trained  # an untrained label is not reported
    assert [read["probabilities"][k] for k in trained] == pytest.approx([result.probabilities[k] for k in trained], abs=1e-4)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed (make setup installs it)")
def test_every_result_object_passes_dciodvfy(case, tmp_path):
    """dciodvfy (dicom3tools) checks each object against its IOD: no errors (the private coding scheme of the few
    concepts without a standard code is reported as a warning, as it must be)."""
    source, gray, result, _ = case
    for i, obj in enumerate([*package(source, gray, result), *package(source, None, None, error="x")]):
        path = tmp_path / f"{i}.dcm"
        obj.save_as(path, enforce_file_format=True)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        warnings = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Warning")]
        assert not errors, (obj.SOPClassUID.name, errors)
        assert all("99CXRTRIAGE" in w for w in warnings), (obj.SOPClassUID.name, warnings)


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
    read = read_sr(_roundtrip(objects[0]))
    assert read["status"] == "unavailable" and read["error"] == f"{UNAVAILABLE}: inference unavailable: deadline exceeded"
    assert "request req-2" in read["algorithm"]["parameters"] and read["finding"] is None


def test_absent_type2_attributes_are_copied_empty_into_every_object(case):
    """Real modalities omit type-2 attributes (StudyTime, AccessionNumber, ...): still a full result package."""
    import copy

    source, gray, result, _ = case
    bare = copy.deepcopy(source)
    for keyword in TYPE2_COPIED:
        delattr(bare, keyword)
    objects = [*package(bare, gray, result), *package(bare, None, None, error="x")]
    assert len(objects) == 4
    for obj in map(_roundtrip, objects):
        assert all(k in obj and not obj[k].value for k in TYPE2_COPIED), obj.SOPClassUID
    assert "StudyTime" not in bare  # the received instance itself is left as it came


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
