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
