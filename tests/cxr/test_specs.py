"""The specs are the single source of names and shapes; check they are self-consistent."""
from __future__ import annotations

import pytest

from cxr.labels import LABELS
from cxr.specs import (CAM_SIZE, CLASSIFIER, CLS_MASK, ENSEMBLE_OUTPUTS, ENSEMBLE_STEPS, LUNG_SEGMENTATION, MODEL_SPECS,
                       PREPROCESS, ROUTER, classifier_spec)


@pytest.mark.parametrize("owner", [*MODEL_SPECS.values(), PREPROCESS, ROUTER], ids=lambda o: o.role)
def test_tensor_names_are_unique_within_a_model(owner):
    names = [t.name for t in owner.inputs + owner.outputs]
    assert len(names) == len(set(names))


def test_shapes_follow_the_input_sizes():
    assert CLASSIFIER.labels == LABELS
    assert CLASSIFIER.output("probabilities").dims == (len(LABELS),)
    assert CLASSIFIER.output("cam").dims == (len(LABELS), *CAM_SIZE)
    assert CAM_SIZE == tuple(s // 32 for s in CLASSIFIER.input_size)
    assert LUNG_SEGMENTATION.output("lung_mask").dims == CLS_MASK.dims
    assert PREPROCESS.outputs == (LUNG_SEGMENTATION.inputs[0], CLASSIFIER.inputs[0])


def test_a_classifier_without_mask_attention_takes_no_mask():
    plain, masked = classifier_spec("a", mask_attention=False), classifier_spec("b", mask_attention=True)
    assert [t.name for t in plain.inputs] == ["cls_image"] and CLS_MASK in masked.inputs
    assert plain.feeds("img", "mask") == {"cls_image": "img"}
    assert masked.feeds("img", "mask") == {"cls_image": "img", "lung_mask": "mask"}
    with pytest.raises(ValueError, match="takes"):
        masked.feeds("img")
    (wiring,) = [inputs for role, inputs, _ in ENSEMBLE_STEPS if role == CLASSIFIER.role]
    assert set(wiring) == {t.name for t in CLASSIFIER.inputs}  # the ensemble feeds exactly what it takes


def test_every_ensemble_output_comes_from_the_last_step():
    assert ENSEMBLE_OUTPUTS == ROUTER.outputs


def test_unknown_tensor_is_named():
    with pytest.raises(ValueError, match="no tensor 'pixels'"):
        CLASSIFIER.output("pixels")
