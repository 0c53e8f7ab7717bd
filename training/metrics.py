"""Segmentation and classification metrics, shared by training, ``cxr evaluate`` and reports."""
from __future__ import annotations

from typing import Sequence

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
    """Mean per-image IoU and Dice."""
    scores = np.array([iou_dice(p, t) for p, t in zip(preds, targets)])
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
