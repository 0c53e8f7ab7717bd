"""``cxr evaluate``: score the shipped weights through the served ensemble or the exported ONNX.

    cxr evaluate [--manifest A --manifest B] [--split test] [--url HOST:PORT] [--json]

On a split of one or more CSVs in the shared manifest's format: the pooled report (accuracy, macro-F1 over
the labels present, per-class P/R/F1/AUC, confusion matrix, normal-vs-abnormal AUC, ECE over 15 bins) with
bootstrap 95 % intervals (1,000 resamples of whole patients), the same per cohort (``cohen``, ``kermany``,
``kermany224``: the sources differ in population and framing), and lung-mask IoU/Dice where rows have
masks (a manifest without masks is valid: it scores the classifier alone). Masks are compared in the
letterboxed network frame after MANet post-processing, exactly what the service returns. ``gate``: the share
of these real CXRs the safety gate accepts (flagged included), per cohort; a refused study is left out of the
classifier's numbers, as the service would have given it no answer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cxr.labels import LABELS, label_index
from cxr.lungmask import read_mask
from cxr.pixels import NOT_FRONTAL_CHEST
from cxr.triage import gate_decision
from cxr.specs import LUNG_SEGMENTATION
from training.data.manifest import Record, read_split
from training.metrics import (bootstrap_intervals, calibration_bins, classification_report, headline,
                              segmentation_report)


def _predict(records: list[Record], url: str | None, repository, batch_size: int, onnx_files,
             progress: bool = False) -> tuple[list, list, list, list]:
    """Probabilities (NaN where refused), post-processed masks, errors and the safety gate's decision
    (``accept`` / ``flag`` / ``refuse``, ``error`` for any other refusal), in ``records`` order."""
    probs, masks, errors, decisions = [], [], [], []
    bar = tqdm(total=len(records), desc="evaluate", unit="img", leave=False, disable=not progress)
    if url:
        from client.grpc_client import TriageClient

        client = TriageClient(url, outputs=("probabilities", "lung_mask", "triage"))
        for out in client.triage_many(((str(r.image), r.image) for r in records), concurrency=8):
            bar.update()
            if out.error:
                errors.append({"file": out.name, "error": out.error})
                probs.append(np.full(len(LABELS), np.nan))
                masks.append(None)
                decisions.append("refuse" if NOT_FRONTAL_CHEST in out.error else "error")
                continue
            probs.append(out.arrays["probabilities"][0])
            masks.append(out.arrays["lung_mask"][0, 0])
            decisions.append(gate_decision(out.triage))
    else:
        from client.local_pipeline import LocalPipeline

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
    bar.close()
    return probs, masks, errors, decisions


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


def evaluate(manifest: str | Path | Sequence[str | Path], split: str | None = "test", url: str | None = None,
             repository: str | Path = "build/model_repository", batch_size: int = 8,
             onnx_files: dict[str, str | Path] | None = None, resamples: int = 1000, progress: bool = False) -> dict:
    """Evaluate via ``url`` (served ensemble over gRPC) or, if ``url`` is None, via the ONNX files the
    repository serves (``model.int8.onnx`` in a ``cpu-int8`` repository), or ``onnx_files`` in their place
    (``{role: path}``: a candidate version, for the release gates). ``manifest``: one path or several.
    ``progress``: a progress bar on stderr."""
    manifests = [Path(manifest)] if isinstance(manifest, (str, Path)) else [Path(m) for m in manifest]
    records = read_split(manifests, split)
    probs, masks, errors, decisions = _predict(records, url, repository, batch_size, onnx_files, progress)
    ok = [i for i, p in enumerate(probs) if not np.isnan(p).any()]
    seg_pairs = [(masks[i], read_mask(records[i].mask, LUNG_SEGMENTATION.input_size)) for i in ok if records[i].mask]
    y = np.array([label_index(records[i].label) for i in ok])
    p = np.stack([probs[i] for i in ok])
    patients = np.array([records[i].patient_id or str(records[i].image) for i in ok])
    cohorts = np.array([records[i].cohort for i in ok])
    return {
        "manifest": ", ".join(map(str, manifests)),
        "split": split,
        "via": f"triton grpc {url}" if url else f"onnxruntime {repository}",
        "segmentation": segmentation_report([a for a, _ in seg_pairs], [t for _, t in seg_pairs]),
        "classification": scored(y, p, patients, resamples),
        "by_cohort": {c: scored(y[cohorts == c], p[cohorts == c], patients[cohorts == c], resamples)
                      for c in sorted(set(cohorts.tolist()))},
        "gate": {"pooled": gate_report(decisions),
                 **{c: gate_report([d for d, r in zip(decisions, records) if r.cohort == c])
                    for c in sorted({r.cohort for r in records})}},
        "errors": errors,
    }


def _interval(report: dict, key: str) -> str:
    value, ci = report[key], report["intervals"][key]
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def print_classification(name: str, cls: dict) -> None:
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
