"""The safety gate's pixel side: features, detectors, verdicts and what routing does with them."""
from __future__ import annotations

import numpy as np
import pytest

from cxr.cascade import route_batch
from cxr.gate import NAMES, Detector, Gate, Verdict, features, logits_from_cam
from cxr.lungmask import postprocess_mask
from cxr.triage import Thresholds, triage, with_quality

PROBS = np.array([0.97, 0.01, 0.01, 0.01, 0.0], np.float32)  # a confident normal: routine without the gate


def _lungs(turn: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px mask of two tall lungs side by side, and an image whose lungs are darker than around them."""
    mask = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[0:256, 0:256]
    for cx in (80, 176):
        mask[((xx - cx) / 38) ** 2 + ((yy - 128) / 90) ** 2 <= 1] = 1
    image = np.where(mask > 0, 0.3, 0.7).astype(np.float32)
    return np.rot90(mask, turn).copy(), np.rot90(image, turn).copy()


def _vector(mask, image, logits=(3.0, 0.0, 0.0, 0.0, 0.0)):
    return features(postprocess_mask(mask), mask, image, np.array(logits))


def test_features_tell_lungs_side_by_side_from_stacked_and_dark_from_bright():
    upright = dict(zip(NAMES, _vector(*_lungs())))
    rotated = dict(zip(NAMES, _vector(*_lungs(turn=1))))
    mask, image = _lungs()
    inverted = dict(zip(NAMES, _vector(mask, 1.0 - image)))
    assert upright["side_by_side"] > 3 > 0 > rotated["side_by_side"]
    assert upright["lung_aspect"] > 2 > 1 > rotated["lung_aspect"]
    assert upright["lung_balance"] == pytest.approx(1.0, abs=0.02)
    assert upright["lung_contrast"] > 0.3 and inverted["lung_contrast"] < -0.3
    assert upright["energy"] == pytest.approx(np.log(np.exp(3.0) + 4))


def test_the_gap_between_the_lungs_is_wider_at_the_bases_than_upside_down():
    """The heart lies between the lungs below: the gap widens towards the bases, and narrows on an upside-down film."""
    mask = np.zeros((256, 256), np.uint8)
    for y in range(40, 216):
        spread = int(30 * (y - 40) / 176)  # the gap grows from 20 px at the apices to 80 px at the bases
        mask[y, 40 : 118 - spread] = 1
        mask[y, 138 + spread : 216] = 1
    image = np.where(mask > 0, 0.3, 0.7).astype(np.float32)
    upright = dict(zip(NAMES, _vector(mask, image)))["heart_gap"]
    upside_down = dict(zip(NAMES, _vector(np.flipud(mask).copy(), np.flipud(image).copy())))["heart_gap"]
    assert upright > 0.8 and upside_down < -0.8
    assert dict(zip(NAMES, _vector(*_lungs())))["heart_gap"] == pytest.approx(0.0, abs=0.05)  # symmetric ellipses


def test_no_lungs_found_gives_a_vector_not_an_error():
    empty = np.zeros((256, 256), np.uint8)
    vector = _vector(empty, np.full((256, 256), 0.5, np.float32))
    assert vector.shape == (len(NAMES),) and np.isfinite(vector).all()
    assert dict(zip(NAMES, vector))["lung_fraction"] == 0


def test_logits_are_the_mean_of_the_cam():
    cam = np.random.default_rng(0).normal(size=(5, 8, 8))
    assert np.allclose(logits_from_cam(cam), cam.mean(axis=(1, 2)))


def _gate(centre: np.ndarray) -> Gate:
    """Typicality around ``centre`` (unit covariance): flag beyond 3, refuse beyond 6."""
    n = len(NAMES)
    return Gate((Detector("typicality", centre, np.ones(n), 3.0, 6.0, precision=np.eye(n)),))


def test_gate_decides_by_distance_and_names_the_feature_furthest_out():
    centre = _vector(*_lungs())
    gate = _gate(centre)
    assert gate.judge(centre).decision == "accept"
    far = centre.copy()
    far[NAMES.index("side_by_side")] -= 4.0
    flagged = gate.judge(far)
    assert (flagged.decision, flagged.detector, flagged.threshold) == ("flag", "typicality", 3.0)
    assert "horizontal over vertical distance of the two lungs 4.0 sd low" in flagged.reasons[0]
    far[NAMES.index("lung_balance")] -= 6.0
    refused = gate.judge(far)
    assert refused.decision == "refuse"
    assert refused.message().startswith("not a frontal chest radiograph (unlike the training CXRs: ")
    assert refused.message().endswith(f"score {refused.score:.1f} >= 6.0)")


def test_orientation_detector_scores_a_logit_and_the_worst_detector_wins():
    n = len(NAMES)
    weights = np.zeros(n)
    weights[NAMES.index("lung_contrast")] = -2.0  # brighter lungs than surroundings: inverted
    orientation = Detector("orientation", np.zeros(n), np.ones(n), 0.0, 1.0, weights=weights, bias=-0.5)
    gate = Gate((*_gate(_vector(*_lungs())).detectors, orientation))
    mask, image = _lungs()
    assert gate.judge(_vector(mask, image)).decision == "accept"
    verdict = gate.judge(_vector(mask, 1.0 - image))
    assert verdict.detector == "orientation" and verdict.reasons[0].startswith("turned or inverted film?")


def test_gate_survives_its_release_file_and_refuses_a_file_of_other_features():
    gate = _gate(_vector(*_lungs()))
    raw = gate.to_dict()
    again = Thresholds.from_dict({"version": "t", "quality": raw}).gate
    far = _vector(*_lungs(turn=1))
    assert again.judge(far) == gate.judge(far)
    with pytest.raises(ValueError, match="fitted on features"):
        Thresholds.from_dict({"version": "t", "quality": {**raw, "features": ["lung_fraction"]}})


def test_a_flagged_study_is_expedited_for_a_human_look_never_routine():
    base = triage(PROBS, 0.3, Thresholds("t", abnormal_expedited=0.5))
    assert base.priority == "routine"
    flag = Verdict("flag", "typicality", 4.2, 3.0, ("unlike the training CXRs: x 4.0 sd low",))
    flagged = with_quality(base, flag)
    assert flagged.priority == "expedited" and flagged.quality["decision"] == "flag"
    assert "check the image" in flagged.reasons[-1]
    accepted = with_quality(base, Verdict("accept", score=1.0, threshold=3.0))
    assert accepted.priority == "routine" and accepted.quality["decision"] == "accept"


def test_routing_refuses_without_running_stage2_and_needs_the_cams():
    mask, _ = _lungs()
    raw = np.stack([mask[None], np.rot90(mask)[None]]).astype(np.float32)
    cls_images = np.zeros((2, 1, 256, 256), np.float32)  # normalised; unit = mean
    cams = np.zeros((2, 5, 8, 8), np.float32)
    probs = np.array([[0.1, 0.1, 0.5, 0.3, 0.0]] * 2, np.float32)  # both due for stage 2
    centre = _vector(mask, cls_images[0, 0], logits_from_cam(cams[0]))
    thresholds = Thresholds("t", cascade={"run_at": 0.4, "urgent_covid": 0.6}, quality=_gate(centre).to_dict())
    calls = []

    def stage2(images):
        calls.append(len(images))
        return np.array([0.1] * len(images)), None

    routed = route_batch(probs, raw, cls_images, thresholds, stage2, cams=cams)
    assert routed[0].refused is None and routed[0].result.quality["decision"] == "accept"
    assert routed[1].refused.startswith("not a frontal chest radiograph")
    assert calls == [1]  # the refused study did not cost a stage-2 run
    with pytest.raises(ValueError, match="needs the classifier's cams"):
        route_batch(probs, raw, cls_images, thresholds, stage2)


def test_features_that_are_not_finite_are_refused_not_accepted():
    gate = _gate(_vector(*_lungs()))
    vector = _vector(*_lungs())
    vector[NAMES.index("energy")] = np.nan  # e.g. logits that overflowed
    verdict = gate.judge(vector)
    assert verdict.decision == "refuse" and "features not finite: energy" in verdict.message()


def test_a_malformed_detector_is_refused_when_the_release_loads():
    raw = _gate(_vector(*_lungs())).to_dict()
    detector = raw["detectors"][0]
    for broken, problem in (({"precision": [[1.0]]}, "precision has shape"), ({"flag_at": 9.0}, "flag_at 9.0 > refuse_at"),
                            ({"weights": [0.0] * len(NAMES)}, "exactly one of precision")):
        with pytest.raises(ValueError, match=problem):
            Thresholds.from_dict({"version": "t", "quality": {**raw, "detectors": [{**detector, **broken}]}})


def test_an_accepted_study_carries_the_score_closest_to_its_flag_line():
    centre = _vector(*_lungs())
    near = centre.copy()
    near[0] += 2.0
    verdict = _gate(centre).judge(near)
    assert (verdict.decision, verdict.detector, verdict.threshold) == ("accept", "typicality", 3.0)
    assert verdict.score == pytest.approx(2.0)
