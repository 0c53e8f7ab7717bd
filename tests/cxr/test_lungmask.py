from __future__ import annotations

import numpy as np
import pytest

from cxr.lungmask import lung_fraction, postprocess_mask


def test_keeps_two_largest_components_and_fills_holes():
    mask = np.zeros((100, 100), np.uint8)
    mask[10:90, 10:40] = 1  # left lung
    mask[10:90, 60:90] = 1  # right lung
    mask[40:50, 20:30] = 0  # hole
    mask[0:8, 45:53] = 1  # third, smaller blob (64 px)
    out = postprocess_mask(mask)
    assert out[45, 25] == 1, "hole filled"
    assert out[4, 49] == 0, "third component removed"
    assert out.sum() == 80 * 30 * 2


def test_removes_small_objects_even_if_among_two_largest():
    mask = np.zeros((100, 100), np.uint8)
    mask[10:90, 10:40] = 1
    mask[95:97, 95:97] = 1  # 4 px speck
    out = postprocess_mask(mask, min_fraction=0.005)
    assert out[96, 96] == 0 and out.sum() == 80 * 30


def test_empty_mask_stays_empty_and_fraction():
    assert postprocess_mask(np.zeros((10, 10))).sum() == 0
    assert lung_fraction(np.ones((4, 4))) == 1.0


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expected a"):
        postprocess_mask(np.zeros((1, 10, 10)))


def _scipy_postprocess(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """The MANet cleaning written with scipy.ndimage (fill holes, label, keep the two largest): the reference."""
    from scipy import ndimage

    labelled, count = ndimage.label(ndimage.binary_fill_holes(mask > 0))
    sizes = np.bincount(labelled.ravel())[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable")[:2] if sizes[k] >= min_fraction * mask.size]
    return np.isin(labelled, keep).astype(np.uint8)


@pytest.mark.parametrize("min_fraction", [0.0, 0.005, 0.02])
def test_same_mask_as_the_scipy_definition_on_random_blobs(min_fraction):
    import cv2

    rng = np.random.default_rng(0)
    for _ in range(300):  # thresholded smoothed noise: many components, holes, holes in holes, border contact
        size = int(rng.integers(8, 96))
        noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), rng.uniform(0.5, 3.0))
        mask = (noise > rng.uniform(0.3, 0.7)).astype(np.uint8)
        np.testing.assert_array_equal(postprocess_mask(mask, min_fraction), _scipy_postprocess(mask, min_fraction))


def test_notch_open_to_the_outside_stays_background_hole_is_filled():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    mask[8:12, 8:12] = 0  # a hole, 4-connected to nothing outside
    mask[5, 5] = 0  # a notch in the corner: background, reached from outside
    out = postprocess_mask(mask)
    assert out[10, 10] == 1 and out[5, 5] == 0
