"""``cxr evaluate``: score the shipped weights through the served ensemble or the exported ONNX.

Prints ``{"segmentation": {"iou", "dice"}, "classification": {"accuracy", "macro_f1", "per_class"}}``
on a split of any CSV in the shared manifest's format. Masks are compared in the letterboxed network
frame after MANet post-processing, exactly what the service returns.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from cxr.labels import LABELS, label_index
from cxr.lungmask import read_mask
from cxr.specs import LUNG_SEGMENTATION
from training.metrics import classification_report, segmentation_report


def _rows(manifest: Path, split: str | None) -> list[dict]:
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r.get("split") == split]
    if not rows:
        raise ValueError(f"{manifest} has no rows for split {split!r}")
    return rows


def evaluate(manifest: str | Path, split: str | None = "test", url: str | None = None,
             repository: str | Path = "build/model_repository", batch_size: int = 8,
             onnx_files: dict[str, str | Path] | None = None) -> dict:
    """Evaluate via ``url`` (served ensemble over gRPC) or, if ``url`` is None, via the ONNX files the
    repository serves (``model.int8.onnx`` in a ``cpu-int8`` repository), or ``onnx_files`` in their place
    (``{role: path}``: a candidate version, for the release gates)."""
    manifest = Path(manifest)
    rows = _rows(manifest, split)
    root = manifest.parent
    probs, masks, errors = [], [], []
    if url:
        from client.grpc_client import TriageClient

        client = TriageClient(url, outputs=("probabilities", "lung_mask"))
        items = [(r["file"], (root / r["file"]).read_bytes()) for r in rows]
        for out in client.triage_many(items, concurrency=8):
            if out.error:
                errors.append({"file": out.name, "error": out.error})
                probs.append(np.full(len(LABELS), np.nan))
                masks.append(None)
                continue
            probs.append(out.arrays["probabilities"][0])
            masks.append(out.arrays["lung_mask"][0, 0])
    else:
        from client.local_pipeline import LocalPipeline

        pipeline = LocalPipeline(repository, onnx_files=onnx_files)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            for res in pipeline.run_batch([(root / r["file"]).read_bytes() for r in chunk]):
                probs.append(res.probabilities)
                masks.append(res.lung_mask)
    ok = [i for i, p in enumerate(probs) if not np.isnan(p).any()]
    seg_pairs = [(masks[i], read_mask(root / rows[i]["mask"], LUNG_SEGMENTATION.input_size)) for i in ok if rows[i].get("mask")]
    report = {
        "manifest": str(manifest),
        "split": split,
        "via": f"triton grpc {url}" if url else f"onnxruntime {repository}",
        "segmentation": segmentation_report([p for p, _ in seg_pairs], [t for _, t in seg_pairs]),
        "classification": classification_report(
            [label_index(rows[i]["label"]) for i in ok], np.stack([probs[i] for i in ok]), LABELS
        ),
        "errors": errors,
    }
    return report


def run(manifest: str, split: str | None, url: str | None, repository: str, as_json: bool) -> int:
    report = evaluate(manifest, split, url, repository)
    if as_json:
        print(json.dumps(report))
    else:
        seg, cls = report["segmentation"], report["classification"]
        print(f"{report['via']} on {report['split']} ({cls['n']} images)")
        print(f"segmentation: IoU {seg['iou']:.4f}  Dice {seg['dice']:.4f}  ({seg['n']} masks)")
        print(f"classification: accuracy {cls['accuracy']:.4f}  macro-F1 {cls['macro_f1']:.4f} (over {', '.join(cls['labels_present'])})")
        for label, m in cls["per_class"].items():
            auc = f"{m['auc']:.3f}" if m["auc"] is not None else "n/a"
            print(f"  {label:<10} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  AUC {auc}  n={m['support']}")
        if report["errors"]:
            print(f"{len(report['errors'])} images rejected: {report['errors'][:3]}", file=sys.stderr)
    return 0
