"""Score a served pipeline on labelled data: the report behind ``cxr evaluate``, the release gates and the
threshold fits.

The predictions come from a callable (the in-process ONNX pipeline by default: :func:`local_predictions`;
``cxr evaluate --url`` passes one that calls the served ensemble over gRPC), so this module needs no client.
On a split of one or more manifests: the pooled report (accuracy, macro-F1 over the labels present, per-class
P/R/F1/AUC, confusion matrix, normal-vs-abnormal AUC, ECE over 15 bins) with bootstrap 95 % intervals (1,000
resamples of whole patients), the same per cohort, lung-mask IoU/Dice where rows have masks (a manifest without
masks scores the classifier alone) and the share of real CXRs the safety gate accepts. A refused study is left
out of the classifier's numbers, as the service would have given it no answer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from cxr.labels import LABELS, label_index
from cxr.lungmask import read_mask
from cxr.pipeline import LocalPipeline
from cxr.specs import LUNG_SEGMENTATION
from cxr.triage import gate_decision
from training.data.manifest import Record, read_split
from training.metrics import (bootstrap_intervals, calibration_bins, classification_report, headline,
                              segmentation_report)

Predictions = tuple[list, list, list, list]
"""Probabilities (NaN where refused), post-processed masks, errors and the safety gate's decision (``accept`` /
``flag`` / ``refuse``, ``error`` for any other refusal), in the records' order."""
Predict = Callable[[list[Record], tqdm], Predictions]


def local_predictions(repository: str | Path, batch_size: int = 8,
                      onnx_files: dict[str, str | Path] | None = None) -> Predict:
    """Predictions of the ONNX files ``repository`` serves (``model.int8.onnx`` in a ``cpu-int8`` one), or of
    ``onnx_files`` in their place (``{role: path}``: a candidate version, for the release gates)."""
    def predict(records: list[Record], bar: tqdm) -> Predictions:
        probs, masks, errors, decisions = [], [], [], []
        pipeline = LocalPipeline(repository, onnx_files=onnx_files)
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            bar.update(len(chunk))
            for record, res in zip(chunk, pipeline.run_batch([r.image.read_bytes() for r in chunk])):
                if res.refused:  # as the served ensemble would answer this request
                    errors.append({"file": str(record.image), "error": f"bad image: {res.refused}"})
                    probs.append(np.full(len(LABELS), np.nan))
                    masks.append(None)
                    decisions.append("refuse")
                    continue
                probs.append(res.probabilities)
                masks.append(res.lung_mask)
                decisions.append(gate_decision(res.triage))
        return probs, masks, errors, decisions

    return predict


def gate_report(decisions: Sequence[str]) -> dict:
    """Share of real CXRs the safety gate accepts (flagged ones are accepted, at least ``expedited``)."""
    decisions = list(decisions)
    n = len(decisions)
    counts = {d: decisions.count(d) for d in ("accept", "flag", "refuse", "error")}
    return {"n": n, **counts, "accepted": (counts["accept"] + counts["flag"]) / n if n else None,
            "flagged": counts["flag"] / n if n else None, "refused": counts["refuse"] / n if n else None}


def scored(y_true: Sequence[int], probs: np.ndarray, patients: Sequence[str], resamples: int = 1000) -> dict:
    """Classification report, headline numbers and their patient-bootstrap intervals, reliability bins."""
    report = classification_report(y_true, probs, LABELS)
    report.update(headline(y_true, probs))
    report["intervals"] = bootstrap_intervals(y_true, probs, patients, resamples)
    report["reliability"] = calibration_bins(y_true, probs)["bins"]
    return report


def evaluate(manifest: str | Path | Sequence[str | Path], split: str | None = "test",
             repository: str | Path = "build/model_repository", onnx_files: dict[str, str | Path] | None = None,
             resamples: int = 1000, progress: bool = False, predict: Predict | None = None,
             via: str | None = None) -> dict:
    """The report of ``predict`` (default: :func:`local_predictions` of ``repository`` / ``onnx_files``) on
    ``split`` of ``manifest`` (one path or several); ``via`` names where the predictions came from.
    ``progress``: a progress bar on stderr."""
    manifests = [Path(manifest)] if isinstance(manifest, (str, Path)) else [Path(m) for m in manifest]
    records = read_split(manifests, split)
    predict = predict or local_predictions(repository, onnx_files=onnx_files)
    with tqdm(total=len(records), desc="evaluate", unit="img", leave=False, disable=not progress) as bar:
        probs, masks, errors, decisions = predict(records, bar)
    ok = [i for i, p in enumerate(probs) if not np.isnan(p).any()]
    seg_pairs = [(masks[i], read_mask(records[i].mask, LUNG_SEGMENTATION.input_size)) for i in ok if records[i].mask]
    y = np.array([label_index(records[i].label) for i in ok])
    patients = np.array([records[i].patient_id or str(records[i].image) for i in ok])
    cohorts = np.array([records[i].cohort for i in ok])
    if ok:
        p = np.stack([probs[i] for i in ok])
        classification = scored(y, p, patients, resamples)
        by_cohort = {c: scored(y[cohorts == c], p[cohorts == c], patients[cohorts == c], resamples)
                     for c in sorted(set(cohorts.tolist()))}
    else:  # every study refused by the safety gate or failed: nothing to score (the gate report says why)
        classification, by_cohort = {"n": 0, "accuracy": None, "macro_f1": None}, {}
    return {
        "manifest": ", ".join(map(str, manifests)),
        "split": split,
        "via": via or f"onnxruntime {repository}",
        "segmentation": segmentation_report([a for a, _ in seg_pairs], [t for _, t in seg_pairs]),
        "classification": classification,
        "by_cohort": by_cohort,
        "gate": {"pooled": gate_report(decisions),
                 **{c: gate_report([d for d, r in zip(decisions, records) if r.cohort == c])
                    for c in sorted({r.cohort for r in records})}},
        "errors": errors,
    }
