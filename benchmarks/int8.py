"""INT8 (ONNX Runtime static QDQ) against FP32: speed and accuracy on the test split, in one run.

    python -m benchmarks.int8 [--out build/int8] [--json]

Compares the ``cpu`` and ``cpu-int8`` repositories (built if missing or stale, the INT8 graphs by
:mod:`export.quantize` with calibration on train images): per-model ms/image and the end-to-end raw
pipeline rate at batch 8 (:mod:`benchmarks.raw`), and lung IoU, accuracy and macro-F1 on the test split
via :func:`client.evaluate.evaluate`. Goal: speed-up >= 1.5x with <= 1 point loss of IoU and accuracy;
``meets_goal`` says whether this run met it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import raw as raw_bench
from benchmarks.images import benchmark_images
from benchmarks.run import ensure_repository
from client.evaluate import evaluate
from cxr.cpu import cpu_line, describe_cpu
from training.data.manifest import DEFAULT_MANIFEST

GOAL_SPEEDUP, GOAL_MAX_LOSS = 1.5, 0.01


def scores(report: dict) -> dict[str, float]:
    return {"iou": report["segmentation"]["iou"], "accuracy": report["classification"]["accuracy"],
            "macro_f1": report["classification"]["macro_f1"]}


def measure(manifest: str) -> dict:
    blobs = benchmark_images(manifest)
    result = {}
    for precision, profile in (("fp32", "cpu"), ("int8", "cpu-int8")):
        repository = ensure_repository(profile)
        (row,) = raw_bench.measure(repository, blobs, batches=(8,))["rows"]
        result[precision] = {"repository": repository, "segmentation_ms": row["segmentation_ms"],
                             "classification_ms": row["classification_ms"], "raw_img_s": row["img_s"],
                             **scores(evaluate(manifest, "test", None, repository, resamples=0))}
    result["cpu"] = describe_cpu()
    build = json.loads((Path(result["int8"]["repository"]) / "build.json").read_text())
    result["int8_build"] = {k: build["int8"][k] for k in ("format", "host", "agreement")}
    fp32, int8 = result["fp32"], result["int8"]
    models_fp32 = fp32["segmentation_ms"] + fp32["classification_ms"]
    models_int8 = int8["segmentation_ms"] + int8["classification_ms"]
    result["speedup_models"] = models_fp32 / models_int8
    result["speedup_segmentation"] = fp32["segmentation_ms"] / int8["segmentation_ms"]
    result["speedup_classification"] = fp32["classification_ms"] / int8["classification_ms"]
    result["speedup_end_to_end"] = int8["raw_img_s"] / fp32["raw_img_s"]
    result["loss_points"] = {k: 100 * (fp32[k] - int8[k]) for k in ("iou", "accuracy", "macro_f1")}
    result["meets_goal"] = bool(result["speedup_models"] >= GOAL_SPEEDUP
                                and max(result["loss_points"]["iou"], result["loss_points"]["accuracy"]) <= 100 * GOAL_MAX_LOSS)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/int8", help="where int8_results.json goes")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.manifest)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "int8_results.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return result
    cpu, check = result["cpu"], result["int8_build"]
    print(cpu_line(cpu))
    print(f"INT8: {check['format']}; checked at build on {check['host']['model']} ({check['host']['isa']}): mask IoU "
          f"{check['agreement']['mask_iou']:.4f}, mean |dp| {check['agreement']['mean_abs_dp']:.4f}, top-1 agreement "
          f"{check['agreement']['top1_agreement']:.2f} on {check['agreement']['images']} val images")
    print(f"{'':<6} {'seg ms':>7} {'cls ms':>7} {'raw img/s':>9} {'IoU':>7} {'acc':>7} {'macro-F1':>8}")
    for precision in ("fp32", "int8"):
        r = result[precision]
        print(f"{precision:<6} {r['segmentation_ms']:>7.2f} {r['classification_ms']:>7.2f} {r['raw_img_s']:>9.2f} "
              f"{r['iou']:>7.4f} {r['accuracy']:>7.4f} {r['macro_f1']:>8.4f}")
    print(f"speed-up: models {result['speedup_models']:.2f}x (segmentation {result['speedup_segmentation']:.2f}x, "
          f"classification {result['speedup_classification']:.2f}x), end to end {result['speedup_end_to_end']:.2f}x")
    print(f"loss (points): {result['loss_points']}; goal >= {GOAL_SPEEDUP}x with <= 1 point: "
          f"{'met' if result['meets_goal'] else 'not met'}")
    return result


if __name__ == "__main__":
    main()
