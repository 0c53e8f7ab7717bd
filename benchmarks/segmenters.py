"""The lung segmenters side by side (issue 19): cost, quality and speed at the served input.

    python -m benchmarks.segmenters [--json] [--out build/bench/segmenters.json]

For the served segmenter and the one served before it (:data:`cxr.specs.EARLIER_SEGMENTATION`, its teacher):
GMACs and parameters (:mod:`benchmarks.flops`), post-processed test IoU with its 95 % patient-bootstrap interval
(1,000 resamples), and ONNX Runtime ms per image at batch 1, FP32 and INT8 (the INT8 profile's recipe,
:func:`export.quantize.quantize`, calibrated on the same 64 train images), each with the INT8 graph's IoU.
Speed is measured here, in this process, one model at a time; the CPU is named in the output.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.flops import count_spec
from cxr.cpu import cpu_line, describe_cpu
from cxr.lungmask import postprocess_mask
from cxr.onnx_session import cpu_session
from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, EARLIER_SEGMENTATION, LUNG_SEGMENTATION, ModelSpec
from export.onnx import export_onnx
from export.quantize import calibration_blobs, quantize
from training.common import WEIGHTS_DIR
from training.data.datasets import SegmentationDataset
from training.data.manifest import DEFAULT_MANIFEST, read_manifest
from training.metrics import group_bootstrap, iou_dice

CANDIDATES = {"served": LUNG_SEGMENTATION, "earlier": EARLIER_SEGMENTATION}


def _masks(session, images: np.ndarray) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    return [postprocess_mask((session.run(None, {name: images[i : i + 1]})[0][0, 0] > 0).astype(np.uint8))
            for i in range(len(images))]


def _ms_per_image(session, images: np.ndarray, repeats: int = 3) -> float:
    name = session.get_inputs()[0].name
    for image in images[:4]:
        session.run(None, {name: image[None]})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            session.run(None, {name: image[None]})
        times.append((time.perf_counter() - start) * 1e3 / len(images))
    return float(np.median(times))


def _iou(masks: list[np.ndarray], targets: list[np.ndarray], patients: list[str]) -> dict:
    per_image = np.array([iou_dice(m, t)[0] for m, t in zip(masks, targets)])
    interval = group_bootstrap(patients, lambda idx: {"iou": float(per_image[idx].mean())})["iou"]
    return {"iou": float(per_image.mean()), "iou_95ci": interval}


def measure(spec: ModelSpec, test: SegmentationDataset, calibration: np.ndarray, folder: Path) -> dict:
    images = np.stack([test[i][0].numpy() for i in range(len(test))])
    patients = [r.patient_id for r in test.records]
    fp32, int8 = folder / f"{spec.name}.onnx", folder / f"{spec.name}.int8.onnx"
    export_onnx(spec, fp32, WEIGHTS_DIR / spec.weights)
    quantize(spec, fp32, int8, [{spec.inputs[0].name: calibration[i : i + 8]} for i in range(0, len(calibration), 8)])
    cost = count_spec(spec)
    row = {"model": spec.name, "weights": spec.weights, "gmacs": cost["gmacs"], "params_m": cost["params_m"]}
    for precision, path in (("fp32", fp32), ("int8", int8)):
        session = cpu_session(path)
        row[precision] = {**_iou(_masks(session, images), test.masks, patients), "ms_per_image": _ms_per_image(session, images)}
    return row


def print_table(result: dict) -> None:
    print(cpu_line(result["cpu"]))
    print(f"test split: {result['test_masks']} masks, post-processed, {LUNG_SEGMENTATION.input_size[0]} px; ms/img at batch 1")
    print(f"{'':<9} {'model':<24} {'GMAC':>5} {'params M':>8}  {'IoU FP32 [95% CI]':<24} {'IoU INT8':>8} {'ms FP32':>8} {'ms INT8':>8}")
    for role, r in result["segmenters"].items():
        lo, hi = r["fp32"]["iou_95ci"]
        print(f"{role:<9} {r['model']:<24} {r['gmacs']:>5.2f} {r['params_m']:>8.2f}  "
              f"{r['fp32']['iou']:.3f} [{lo:.3f}, {hi:.3f}]{'':<6} {r['int8']['iou']:>8.3f} "
              f"{r['fp32']['ms_per_image']:>8.1f} {r['int8']['ms_per_image']:>8.1f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/bench/segmenters.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    test = SegmentationDataset(read_manifest(DEFAULT_MANIFEST, "test"), LUNG_SEGMENTATION)
    calibration = np.stack([prepare_bytes(b, (LUNG_SEGMENTATION, CLASSIFIER))[0] for b in calibration_blobs()])
    with tempfile.TemporaryDirectory() as folder:
        rows = {role: measure(spec, test, calibration, Path(folder)) for role, spec in CANDIDATES.items()}
    result = {"cpu": describe_cpu(), "test_masks": len(test), "segmenters": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result)) if args.json else print_table(result)
    return result


if __name__ == "__main__":
    main()
