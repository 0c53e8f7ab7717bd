"""The safety gate's pixel side: is this a frontal chest radiograph like the ones the models were trained on?

Built only from what the served models already compute, so it costs about a millisecond per image:

- the lung mask: a frontal CXR has two lung-shaped components side by side, of similar size, taller than
  wide, solid, in the middle band of the image, further apart at the bases than at the apices (the heart
  lies between them below); a photograph, a document or a knee gives fragments, one blob, or shapes in the
  wrong places; a 90-degree rotation stacks the lungs, an upside-down film puts the wide gap on top;
- the image inside and around the lungs: lungs are darker than the mediastinum and the soft tissue beside
  them (air attenuates least), and the abdomen below them is brighter than the neck above; a photometrically
  inverted or upside-down film breaks these;
- the grey levels: a radiograph spreads over many, a drawing, a document or a binary image over few;
- the classifier's own logits (recovered from the CAM: global average pooling then a linear head, so the
  mean of the CAM over positions is the logits): ``logsumexp(logits)``, the negative of the energy of Liu et
  al. ("Energy-based out-of-distribution detection", NeurIPS 2020), is low on inputs unlike the training data.

:func:`features` turns one study into a fixed vector. A :class:`Gate` holds two :class:`Detector` s fitted by
``cxr thresholds gate`` (:mod:`client.gate`): ``typicality``, the Mahalanobis distance to the training split's
real CXRs, and ``orientation``, a logistic regression against the same CXRs turned the wrong way. Each has a
``flag_at`` (borderline: triaged, but at least ``expedited`` with a ``quality`` block for a human look) and a
``refuse_at`` threshold, fitted on val so that each refuses at most 0.5 % of any source (together at most
1 %). A vector that is not finite (e.g. overflowing logits) is refused. The fitted gate is part of the
thresholds release (its ``quality`` section), like every operating point.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr.specs import CLASSIFIER

# name -> what it measures (also the vocabulary of the reasons given to callers)
FEATURES = {
    "lung_fraction": "share of the image that is lung",
    "kept_fraction": "cleaned lung area / raw mask area (hole filling can make it exceed 1)",
    "fragments": "raw mask components the cleaning dropped",
    "lung_balance": "smaller lung area / larger lung area",
    "side_by_side": "horizontal over vertical distance of the two lungs",
    "centre_x": "horizontal centre of the lungs (0 left, 1 right)",
    "centre_y": "vertical centre of the lungs (0 top, 1 bottom)",
    "lung_height": "lung height / image height",
    "lung_aspect": "lung height / width",
    "solidity": "lung area / area of its bounding boxes",
    "apex_width": "lung width near the apices / near the bases",
    "lung_contrast": "brightness around the lungs minus inside them",
    "lung_level": "brightness inside the lungs",
    "below_above": "brightness below the lungs minus above them",
    "energy": "classifier energy, logsumexp of the logits",
    "grey_entropy": "spread of grey levels (histogram entropy)",
    "heart_gap": "log of the gap between the lungs near the bases / near the apices (the heart widens it below)",
}
GREY_BINS = 32
NAMES = tuple(FEATURES)


def features(mask: np.ndarray, raw_mask: np.ndarray, unit_image: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The gate's feature vector of one study.

    Args:
        mask: post-processed lung mask ``(H, W)`` (at most two components, :func:`cxr.lungmask.postprocess_mask`).
        raw_mask: the segmenter's binary mask ``(H, W)`` before post-processing.
        unit_image: the image in ``[0, 1]`` at the mask's resolution.
        logits: the classifier's logits (``(classes,)``).
    """
    h, w = mask.shape
    lungs = (mask > 0).astype(np.uint8)
    raw = (raw_mask > 0).astype(np.uint8)
    # one pass each (OpenCV, 4-connected like scipy.ndimage.label): areas, boxes and centres of the components
    count, labels, stats, centres = cv2.connectedComponentsWithStats(lungs, connectivity=4)
    raw_count = cv2.connectedComponents(raw, connectivity=4)[0] - 1
    count, stats, centres = count - 1, stats[1:], centres[1:]
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    values = dict.fromkeys(NAMES, 0.0)
    values["lung_fraction"] = float(areas.sum()) / mask.size
    values["kept_fraction"] = float(areas.sum()) / max(int(raw.sum()), 1)
    values["fragments"] = float(np.log1p(max(raw_count - count, 0)))
    z = np.asarray(logits, dtype=np.float64)
    values["energy"] = float(z.max() + np.log(np.exp(z - z.max()).sum()))  # logsumexp
    values["grey_entropy"] = grey_entropy(unit_image)
    if count == 0:
        return np.array([values[n] for n in NAMES], dtype=np.float64)
    heights, widths = stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64), stats[:, cv2.CC_STAT_WIDTH].astype(np.float64)
    top = int(stats[:, cv2.CC_STAT_TOP].min())
    bottom = int((stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT]).max())
    if count >= 2:
        (x0, y0), (x1, y1) = centres[:2]
        values["lung_balance"] = float(areas[:2].min() / areas[:2].max())
        values["side_by_side"] = float(np.log((abs(x1 - x0) + 1) / (abs(y1 - y0) + 1)))
        values["heart_gap"] = _heart_gap(labels, (1, 2) if x0 <= x1 else (2, 1))
    values["centre_x"] = float((centres[:, 0] * areas).sum() / areas.sum() / w)
    values["centre_y"] = float((centres[:, 1] * areas).sum() / areas.sum() / h)
    values["lung_height"] = float((bottom - top) / h)
    values["lung_aspect"] = float(np.mean(heights / widths))
    values["solidity"] = float(areas.sum() / (heights * widths).sum())
    rows = lungs[top:bottom].sum(axis=1, dtype=np.float64)
    quarter = max(len(rows) // 4, 1)
    values["apex_width"] = float(rows[:quarter].mean() / max(rows[-quarter:].mean(), 1.0))
    inside = lungs > 0
    content = unit_image > 0  # not the letterbox padding (nor the image's own darkest level, which scales to 0)
    values["lung_level"] = float(unit_image[inside].mean())
    band = max((bottom - top) // 4, 1)
    above, below = content[max(top - band, 0) : top], content[bottom : bottom + band]
    if above.any() and below.any():
        values["below_above"] = float(unit_image[bottom : bottom + band][below].mean()
                                      - unit_image[max(top - band, 0) : top][above].mean())
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    around = (cv2.dilate(lungs, cross, iterations=max(h // 32, 1)) > 0) & ~inside & content
    if around.any():
        values["lung_contrast"] = float(unit_image[around].mean() - unit_image[inside].mean())
    return np.array([values[n] for n in NAMES], dtype=np.float64)


def _heart_gap(labels: np.ndarray, left_right: tuple[int, int]) -> float:
    """``log((gap + 1) / (gap + 1))`` of the horizontal gap between the two lungs, mean over the lowest quarter
    of the rows where both are present over the highest quarter (0 when they share fewer than 8 rows)."""
    left, right = (labels == left_right[0]), (labels == left_right[1])
    both = left.any(axis=1) & right.any(axis=1)
    if both.sum() < 8:
        return 0.0
    left, right = left[both], right[both]
    inner_left = left.shape[1] - 1 - np.argmax(left[:, ::-1], axis=1)  # the left lung's rightmost pixel per row
    gap = np.argmax(right, axis=1) - inner_left  # negative where the lungs overlap in x (a turned film)
    quarter = max(len(gap) // 4, 1)
    return float(np.log((max(gap[-quarter:].mean(), 0) + 1) / (max(gap[:quarter].mean(), 0) + 1)))


def grey_entropy(unit_image: np.ndarray) -> float:
    """Entropy (in units of its maximum) of the grey-level histogram of the image content (padding excluded): a
    radiograph spreads over many levels; drawings, documents and binary masks use few."""
    content = unit_image[unit_image > 0]
    if content.size == 0:
        return 0.0
    counts = np.bincount(np.minimum((content * GREY_BINS).astype(np.int64), GREY_BINS - 1), minlength=GREY_BINS)
    share = counts[counts > 0] / content.size
    return float(-(share * np.log(share)).sum() / np.log(GREY_BINS))


def study_features(mask: np.ndarray, raw_mask: np.ndarray, cls_image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """:func:`features` from the served tensors of one study: post-processed mask ``(H, W)``, the segmenter's
    raw mask ``(1, H, W)``, the classifier's normalised input ``(1, H', W')`` and its CAM ``(classes, h, w)``."""
    unit = cls_image[0] * CLASSIFIER.std + CLASSIFIER.mean
    if unit.shape != mask.shape:
        unit = cv2.resize(unit, mask.shape[::-1], interpolation=cv2.INTER_AREA)
    return features(mask, raw_mask[0], unit, logits_from_cam(cam))


def batch_features(masks, raw_masks: np.ndarray, cls_images: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """``(N, features)`` of a batch: :func:`study_features` of each study (``masks``: post-processed, per study)."""
    rows = [study_features(m, r, c, k) for m, r, c, k in zip(masks, raw_masks, cls_images, cams, strict=True)]
    return np.array(rows, dtype=np.float64).reshape(-1, len(NAMES))


def logits_from_cam(cam: np.ndarray) -> np.ndarray:
    """``(classes, h, w)`` class-activation map -> logits: the head is linear after global average pooling."""
    return cam.reshape(cam.shape[0], -1).mean(axis=1)


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one study: ``accept``, ``flag`` (borderline) or ``refuse``."""

    decision: str
    detector: str | None = None  # the detector that decided (accepted: the one closest to flagging)
    score: float = 0.0
    threshold: float = 0.0
    reasons: tuple[str, ...] = ()

    def message(self) -> str:
        """``not a frontal chest radiograph (<reason>, score s >= t)``: what a refused request's error says."""
        if self.detector == "features":
            return f"not a frontal chest radiograph ({'; '.join(self.reasons)})"
        return f"not a frontal chest radiograph ({'; '.join(self.reasons)}, score {self.score:.1f} >= {self.threshold:.1f})"

    def to_dict(self) -> dict:
        return {"decision": self.decision, "detector": self.detector, "score": round(self.score, 3),
                "threshold": round(self.threshold, 3), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Detector:
    """One score over :func:`features`, with its two val-fitted thresholds (``flag_at`` <= ``refuse_at``).

    ``typicality``: Mahalanobis distance to the training CXRs (``mean``, inverse covariance ``precision``), a
    one-class model that saw no negative at all. ``orientation``: the logit of a logistic regression on the
    standardised features, fitted on training CXRs against the same CXRs rotated, upside down or inverted.
    """

    name: str
    mean: np.ndarray
    scale: np.ndarray  # per-feature standard deviation of the training CXRs
    flag_at: float
    refuse_at: float
    precision: np.ndarray | None = None  # typicality
    weights: np.ndarray | None = None  # orientation, over standardised features
    bias: float = 0.0

    def score(self, vector: np.ndarray) -> float:
        z = (vector - self.mean) / self.scale
        if self.weights is not None:
            return float(z @ self.weights + self.bias)
        d = vector - self.mean
        return float(np.sqrt(max(d @ self.precision @ d, 0.0)))

    def reasons(self, vector: np.ndarray, top: int = 2) -> tuple[str, ...]:
        """In words, the features that push this score up most (``smaller lung area / ... 8.3 sd low``): for
        typicality each feature's share ``d_i (P d)_i`` of the squared distance, for orientation ``w_i z_i``."""
        z = (vector - self.mean) / self.scale
        if self.weights is not None:
            push = z * self.weights
        else:
            d = vector - self.mean
            push = d * (self.precision @ d)
        lead = "turned or inverted film?" if self.weights is not None else "unlike the training CXRs:"
        words = [f"{FEATURES[NAMES[i]]} {abs(z[i]):.1f} sd {'high' if z[i] > 0 else 'low'}" for i in np.argsort(-push)[:top]]
        return (f"{lead} {', '.join(words)}",)

    @classmethod
    def from_dict(cls, raw: dict) -> "Detector":
        """Raises ValueError (naming the problem) on a detector that could not score a feature vector."""
        n = len(NAMES)
        arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in ("mean", "scale", "precision", "weights") if k in raw}
        shapes = {"mean": (n,), "scale": (n,), "precision": (n, n), "weights": (n,)}
        problems = [f"{k} has shape {a.shape}, not {shapes[k]}" for k, a in arrays.items() if a.shape != shapes[k]]
        problems += [f"{k} is missing" for k in ("mean", "scale") if k not in arrays]
        if ("precision" in arrays) == ("weights" in arrays):
            problems.append("needs exactly one of precision (typicality) or weights (orientation)")
        detector = cls(raw["name"], flag_at=float(raw["flag_at"]), refuse_at=float(raw["refuse_at"]),
                       bias=float(raw.get("bias", 0.0)), **arrays) if not problems else None
        if detector is not None and not detector.flag_at <= detector.refuse_at:
            problems.append(f"flag_at {detector.flag_at} > refuse_at {detector.refuse_at}")
        if detector is not None and not all(np.isfinite(a).all() for a in arrays.values()):
            problems.append("has non-finite values")
        if problems:
            raise ValueError(f"safety gate detector {raw.get('name')!r}: {'; '.join(problems)}")
        return detector

    def to_dict(self) -> dict:
        """Exact (JSON floats round-trip), so the served gate decides exactly as the fitted one was measured."""
        out = {"name": self.name, "flag_at": self.flag_at, "refuse_at": self.refuse_at,
               "mean": self.mean.tolist(), "scale": self.scale.tolist()}
        if self.precision is not None:
            out["precision"] = self.precision.tolist()
        if self.weights is not None:
            out["weights"], out["bias"] = self.weights.tolist(), self.bias
        return out


@dataclass(frozen=True)
class Gate:
    """The detectors of one thresholds release (its ``quality`` section); the worst decision wins."""

    detectors: tuple[Detector, ...]

    @classmethod
    def from_dict(cls, raw: dict) -> "Gate":
        if list(raw["features"]) != list(NAMES):
            raise ValueError(f"the gate was fitted on features {raw['features']}; this code computes {list(NAMES)}")
        return cls(tuple(Detector.from_dict(d) for d in raw["detectors"]))

    def to_dict(self) -> dict:
        return {"features": list(NAMES), "detectors": [d.to_dict() for d in self.detectors]}

    def judge(self, vector: np.ndarray) -> Verdict:
        """The worst decision of the detectors; an accepted study carries the score closest to its flag line."""
        if not np.isfinite(vector).all():
            bad = [NAMES[i] for i in np.flatnonzero(~np.isfinite(vector))]
            return Verdict("refuse", "features", float("inf"), 0.0, (f"features not finite: {', '.join(bad)}",))
        verdict, closest = Verdict("accept"), None
        for detector in self.detectors:
            score = detector.score(vector)
            if closest is None or score - detector.flag_at > closest[0] - closest[1]:
                closest = (score, detector.flag_at, detector.name)
            for decision, limit in (("refuse", detector.refuse_at), ("flag", detector.flag_at)):
                if score >= limit and _RANK[decision] > _RANK[verdict.decision]:
                    verdict = Verdict(decision, detector.name, score, limit, detector.reasons(vector))
                    break
        if verdict.decision == "accept" and closest is not None:
            verdict = Verdict("accept", closest[2], closest[0], closest[1])
        return verdict


_RANK = {"accept": 0, "flag": 1, "refuse": 2}
