"""Segmentation and classification metrics, shared by training, ``cxr evaluate`` and reports."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score


def iou_dice(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two binary masks of equal shape (1.0 when both are empty)."""
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    p, t = pred > 0, target > 0
    inter = np.logical_and(p, t).sum()
    union = np.logical_or(p, t).sum()
    total = p.sum() + t.sum()
    return (float(inter / union) if union else 1.0, float(2 * inter / total) if total else 1.0)


def segmentation_report(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict:
    """Mean per-image IoU and Dice (``None`` when there are no masks: a manifest without masks is valid)."""
    scores = np.array([iou_dice(p, t) for p, t in zip(preds, targets)]).reshape(-1, 2)
    if not len(scores):
        return {"iou": None, "dice": None, "n": 0}
    return {"iou": float(scores[:, 0].mean()), "dice": float(scores[:, 1].mean()), "n": len(scores)}


def classification_report(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1/AUC and the confusion matrix.

    Macro averages run over the classes present in ``y_true`` (tb has no test images, so a zero-support
    class would only add an undefined 0 to the mean); ``labels_present`` lists them.
    """
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    present = sorted(set(y_true.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), zero_division=0
    )
    per_class = {}
    for k, name in enumerate(labels):
        auc = None
        if k in present and len(present) > 1:
            auc = float(roc_auc_score(y_true == k, probs[:, k]))
        per_class[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "auc": auc,
        }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "labels_present": [labels[k] for k in present],
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(labels)))).tolist(),
        "labels": list(labels),
        "n": int(len(y_true)),
    }


def calibration_bins(y_true: Sequence[int], probs: np.ndarray, bins: int = 15) -> dict:
    """Top-label reliability: per equal-width confidence bin, mean confidence, accuracy and count; and the
    expected calibration error ``ECE = sum_b n_b / N * |acc_b - conf_b|`` (Guo et al. 2017, 15 bins)."""
    y_true = np.asarray(y_true)
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = predicted == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        conf = float(confidence[inside].mean()) if n else None
        acc = float(correct[inside].mean()) if n else None
        if n:
            ece += n / len(y_true) * abs(acc - conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": rows}


def abnormal_auc(y_true: Sequence[int], probs: np.ndarray, normal: int = 0) -> float | None:
    """AUC of normal vs abnormal, scored by ``1 - p(normal)`` (``None`` if only one of the two is present)."""
    abnormal = np.asarray(y_true) != normal
    if abnormal.all() or not abnormal.any():
        return None
    return float(roc_auc_score(abnormal, 1.0 - probs[:, normal]))


def headline(y_true: Sequence[int], probs: np.ndarray) -> dict[str, float | None]:
    """The numbers a model card leads with: accuracy, macro-F1 (over present labels), normal-vs-abnormal AUC, ECE."""
    y_true = np.asarray(y_true)
    present = sorted(set(y_true.tolist()))
    y_pred = probs.argmax(1)
    return {"accuracy": float((y_pred == y_true).mean()),
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "abnormal_auc": abnormal_auc(y_true, probs),
            "ece": calibration_bins(y_true, probs)["ece"]}


def group_draws(groups: Sequence[str], resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The patient bootstrap's resamples: ``counts[r, g]``, how often group ``g`` (in order of first appearance) is
    drawn in resample ``r`` (all groups drawn with replacement, as many as there are), and each group's members.
    Every interval of ours is computed on these draws, so one ``seed`` gives one set of resamples everywhere."""
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(members), len(members)), minlength=len(members))
                       for _ in range(resamples)]) if resamples else np.zeros((0, len(members)), int)
    return counts, members


def group_bootstrap(groups: Sequence[str], statistic: Callable[[np.ndarray], dict[str, float | None]],
                    resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile intervals of every value of ``statistic(indices)`` over ``resamples`` resamples of whole
    ``groups`` (patients) with replacement (:func:`group_draws`): images of one patient are not independent, so
    they are drawn together. A key whose value is undefined (None or NaN) in more than half the resamples gets
    None; ``resamples=0`` gives no intervals (``{}``)."""
    counts, members = group_draws(groups, resamples, seed)
    draws: dict[str, list[float]] = {}
    for row in counts:
        idx = np.concatenate([np.tile(members[g], k) for g, k in enumerate(row) if k])
        for key, value in statistic(idx).items():
            draws.setdefault(key, [])
            if value is not None and not np.isnan(value):
                draws[key].append(value)
    tail = 100 * (1 - level) / 2
    return {key: ([float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
                  if len(values) >= max(1, resamples // 2) else None)
            for key, values in draws.items()}


def proportion_lower_bound(hits: np.ndarray, positive: np.ndarray, counts: np.ndarray, members: list[np.ndarray],
                           level: float = 0.95) -> float:
    """The lower end of the :func:`group_bootstrap` interval (same draws ``counts``/``members``) of the share of
    ``positive`` items that are ``hits``: the same number :func:`group_bootstrap` prints, computed in one matrix
    product instead of a loop, so that a threshold search can evaluate it at every candidate. NaN where
    :func:`group_bootstrap` gives None (positives in fewer than half the resamples, or no resamples)."""
    per_group_hits = np.array([np.sum(hits[m] & positive[m]) for m in members], float)
    per_group_pos = np.array([np.sum(positive[m]) for m in members], float)
    drawn_pos = counts @ per_group_pos
    share = (counts @ per_group_hits)[drawn_pos > 0] / drawn_pos[drawn_pos > 0]
    if len(share) < max(1, len(counts) // 2):  # undefined, as group_bootstrap has it (None)
        return float("nan")
    return float(np.percentile(share, 100 * (1 - level) / 2))


def bootstrap_intervals(y_true: Sequence[int], probs: np.ndarray, groups: Sequence[str], resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """:func:`group_bootstrap` intervals of :func:`headline` (None for each when ``resamples=0``)."""
    y_true = np.asarray(y_true)
    intervals = group_bootstrap(groups, lambda idx: headline(y_true[idx], probs[idx]), resamples, seed, level)
    return {key: intervals.get(key) for key in ("accuracy", "macro_f1", "abnormal_auc", "ece")}
