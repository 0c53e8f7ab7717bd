"""``cxr evaluate``: score the shipped weights through the served ensemble or the exported ONNX.

    cxr evaluate [--manifest A --manifest B] [--split test] [--url HOST:PORT] [--json]

The report is :func:`training.evaluation.evaluate`'s (pooled and per cohort, with patient-bootstrap 95 %
intervals; segmentation where rows have masks; the safety gate's acceptance). Here: where the predictions come
from (the served ensemble over gRPC with ``--url``, else the repository's ONNX files in-process) and the printout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from client.grpc_client import TriageClient
from cxr.labels import LABELS
from cxr.pixels import NOT_FRONTAL_CHEST
from cxr.triage import gate_decision
from cxr.specs import LUNG_MASK, PROBABILITIES, TRIAGE
from training.data.manifest import Record
from training.evaluation import Predict, Predictions
from training.evaluation import evaluate as evaluate_with


def grpc_predictions(url: str) -> Predict:
    """Predictions of the served ensemble at ``url`` (what a PACS integration gets back)."""
    def predict(records: list[Record], bar: tqdm) -> Predictions:
        probs, masks, errors, decisions = [], [], [], []
        client = TriageClient(url, outputs=(PROBABILITIES.name, LUNG_MASK.name, TRIAGE.name))
        for out in client.triage_many(((str(r.image), r.image) for r in records), concurrency=8):
            bar.update()
            if out.error:
                errors.append({"file": out.name, "error": out.error})
                probs.append(np.full(len(LABELS), np.nan))
                masks.append(None)
                decisions.append("refuse" if NOT_FRONTAL_CHEST in out.error else "error")
                continue
            probs.append(out.arrays[PROBABILITIES.name][0])
            masks.append(out.arrays[LUNG_MASK.name][0, 0])
            decisions.append(gate_decision(out.triage))
        return probs, masks, errors, decisions

    return predict


def evaluate(manifest: str | Path | Sequence[str | Path], split: str | None = "test", url: str | None = None,
             repository: str | Path = "build/model_repository", onnx_files: dict[str, str | Path] | None = None,
             resamples: int = 1000, progress: bool = False) -> dict:
    """Evaluate via ``url`` (served ensemble over gRPC) or, if ``url`` is None, via the ONNX files the
    repository serves, or ``onnx_files`` in their place (see :func:`training.evaluation.evaluate`)."""
    if url:
        return evaluate_with(manifest, split, resamples=resamples, progress=progress, predict=grpc_predictions(url),
                             via=f"triton grpc {url}")
    return evaluate_with(manifest, split, repository, onnx_files, resamples, progress)


def _interval(report: dict, key: str) -> str:
    value, ci = report[key], report["intervals"][key]
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def print_classification(name: str, cls: dict) -> None:
    if not cls["n"]:
        print(f"{name}: no study scored (every one refused by the safety gate or failed; see below)")
        return
    print(f"{name} ({cls['n']} images): accuracy {_interval(cls, 'accuracy')}  macro-F1 {_interval(cls, 'macro_f1')} "
          f"(over {', '.join(cls['labels_present'])})  normal-vs-abnormal AUC {_interval(cls, 'abnormal_auc')}  "
          f"ECE {_interval(cls, 'ece')}")
    for label, m in cls["per_class"].items():
        if m["support"]:
            auc = f"{m['auc']:.3f}" if m["auc"] is not None else "n/a"
            print(f"  {label:<10} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  AUC {auc}  n={m['support']}")


def run(manifest: str | Sequence[str], split: str | None, url: str | None, repository: str, as_json: bool) -> int:
    report = evaluate(manifest, split, url, repository, progress=not as_json and sys.stderr.isatty())
    if as_json:
        print(json.dumps(report))
        return 0
    seg = report["segmentation"]
    print(f"{report['via']} on {report['split']} of {report['manifest']}; 95 % intervals: patient bootstrap, 1,000 resamples")
    if seg["n"]:
        print(f"segmentation: IoU {seg['iou']:.4f}  Dice {seg['dice']:.4f}  ({seg['n']} masks)")
    else:
        print("segmentation: no rows with a lung mask (classifier only)")
    print_classification("classification, pooled", report["classification"])
    for cohort, cls in report["by_cohort"].items():
        print_classification(f"  cohort {cohort}", cls)
    print("safety gate on these real CXRs: " + "  ".join(
        f"{name} accepted {g['accepted']:.3f} (flagged {g['flagged']:.3f}, refused {g['refuse']} of {g['n']})"
        for name, g in report["gate"].items() if g["n"]))
    if report["errors"]:
        print(f"{len(report['errors'])} images rejected: {report['errors'][:3]}", file=sys.stderr)
    return 0
