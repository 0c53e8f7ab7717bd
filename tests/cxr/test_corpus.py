"""The bad-input corpus through the decoder: every case gets its clear error, or decodes the source picture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxr.pixels import ImageError, decode_image
from tests.corpus import CASES


def test_the_corpus_is_big_enough_and_names_are_unique():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    assert sum(c.error is not None for c in CASES) >= 40  # inputs that must be refused, each with its reason


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_case_gets_its_error_or_the_picture(case, corpus, corpus_source):
    data = corpus[case.name]
    for draft in (None, 256):  # full decode (evaluation, gateway) and the serving path's reduced JPEG decode
        if case.error is not None:
            with pytest.raises(ImageError, match=case.error):
                decode_image(data, draft_size=draft)
            continue
        pixels = decode_image(data, draft_size=draft).pixels
        assert pixels.ndim == 2 and np.isfinite(pixels).all()
        if case.same_picture:
            small = cv2.resize(pixels, (128, 128), interpolation=cv2.INTER_AREA)
            source = cv2.resize(corpus_source.gray.astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA)
            assert np.corrcoef(small.ravel(), source.ravel())[0, 1] > 0.99


def test_refusals_are_counted_by_kind(corpus):
    """The preprocess model labels its ``cxr_images_rejected`` metric with these kinds."""
    from cxr.pixels import REJECTION_KINDS

    kinds = {}
    for case in CASES:
        if case.error is not None:
            with pytest.raises(ImageError) as refused:
                decode_image(corpus[case.name])
            kinds[case.name] = refused.value.kind
    assert set(kinds.values()) <= set(REJECTION_KINDS)
    assert kinds["empty"] == "empty" and kinds["dicom-ct"] == "not_a_radiograph" and kinds["png-1x1"] == "too_small"
    assert kinds["png-claims-20000px"] == kinds["oversized-80mb"] == "too_large" and kinds["gif"] == "unsupported"
    assert kinds["jpeg-truncated"] == "corrupt" and kinds["dicom-float-pixels-nan"] == "invalid_pixels"
