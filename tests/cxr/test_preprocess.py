"""Letterbox/normalise, and the one-preprocessing guarantee: training and serving produce identical inputs."""
from __future__ import annotations

import numpy as np
import pytest

from client.dicom_files import make_dicom
from cxr.preprocess import PrepareInput, letterbox, letterbox_geometry, prepare_bytes, scale_to_unit
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION


@pytest.mark.parametrize(
    "shape,size,expected",
    [
        ((512, 512), (256, 256), (0, 0, 256, 256)),
        ((400, 512), (256, 256), (28, 0, 200, 256)),
        ((512, 400), (256, 256), (0, 28, 256, 200)),
        ((100, 200), (256, 256), (64, 0, 128, 256)),
    ],
)
def test_letterbox_geometry(shape, size, expected):
    box = letterbox_geometry(*shape, size)
    assert (box.top, box.left, box.height, box.width) == expected


def test_letterbox_pads_with_zeros():
    out, box = letterbox(np.ones((400, 512), np.float32), (256, 256))
    assert out.shape == (256, 256)
    assert out[: box.top].sum() == 0 and out[box.top + box.height :].sum() == 0
    assert np.allclose(out[box.top : box.top + box.height], 1)


def test_nearest_keeps_mask_binary():
    mask = (np.random.default_rng(0).random((300, 500)) > 0.5).astype(np.uint8)
    out, _ = letterbox(mask, (256, 256), nearest=True)
    assert set(np.unique(out)) <= {0, 1}


def test_scale_to_unit_handles_any_bit_depth_and_flat_images():
    assert scale_to_unit(np.array([[0, 4095]], np.float32)).tolist() == [[0.0, 1.0]]
    assert scale_to_unit(np.full((4, 4), 7, np.float32)).max() == 0


def test_prepare_bytes_matches_specs(xray_jpeg):
    seg, cls = prepare_bytes(xray_jpeg, (LUNG_SEGMENTATION, CLASSIFIER))
    assert seg.shape == LUNG_SEGMENTATION.inputs[0].dims and seg.dtype == np.float32
    assert cls.shape == CLASSIFIER.inputs[0].dims
    content = cls[cls != (0 - CLASSIFIER.mean) / CLASSIFIER.std]
    assert content.min() >= (0 - CLASSIFIER.mean) / CLASSIFIER.std - 1e-6
    assert content.max() <= (1 - CLASSIFIER.mean) / CLASSIFIER.std + 1e-6


def test_training_and_serving_inputs_are_identical(tmp_path, xray_pixels):
    """One DICOM through the training dataset path and the Triton preprocess path gives the same tensor."""
    from training.data.datasets import load_unit
    from training.data.manifest import Record

    dicom = make_dicom(xray_pixels, modality="CR", bits_stored=12, photometric="MONOCHROME1")
    path = tmp_path / "study.dcm"
    path.write_bytes(dicom)
    prepare = PrepareInput(CLASSIFIER)
    training_input = prepare.normalise(load_unit(Record(path, None, "normal", "", "", "test"), prepare))
    (serving_input,) = prepare_bytes(dicom, (CLASSIFIER,))
    np.testing.assert_array_equal(training_input, serving_input)
