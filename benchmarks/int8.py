"""INT8 (ONNX Runtime static QDQ) against FP32: speed and accuracy on the test split, in one run.

    python -m benchmarks.int8 [--repository build/model_repository] [--json]

Quantizes with :mod:`export.quantize` (calibration on train images), then measures, for each model,
ms/image at batch 8, the end-to-end raw pipeline rate (:mod:`benchmarks.raw`), and lung IoU, accuracy
and macro-F1 on the test split via :func:`client.evaluate.evaluate`. Goal: speed-up >= 1.5x with
<= 1 point loss of IoU and accuracy; ``meets_goal`` says whether this run met it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import raw as raw_bench
from benchmarks.images import benchmark_images
from client.local_pipeline import LocalPipeline

GOAL_SPEEDUP, GOAL_MAX_LOSS = 1.5, 0.01


def model_ms(pipeline: LocalPipeline, blobs: list[bytes], batch: int = 8, repeats: int = 6) -> dict[str, float]:
    seg_in, cls_in = pipeline.prepare(blobs[:batch])
    masks = pipeline.segment(seg_in)
    out = {}
    for name, call in (("segmentation_ms", lambda: pipeline.segment(seg_in)),
                       ("classification_ms", lambda: pipeline.classify(cls_in, masks))):
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[name] = 1e3 * (time.perf_counter() - start) / (repeats * batch)
    return out


def scores(report: dict) -> dict[str, float]:
    return {"iou": report["segmentation"]["iou"], "accuracy": report["classification"]["accuracy"],
            "macro_f1": report["classification"]["macro_f1"]}


def measure(repository: str, out: str, manifest: str) -> dict:
    from client.evaluate import evaluate
    from export.quantize import main as quantize_main

    int8_files = {role: str(path) for role, path in quantize_main(["--repository", repository, "--out", out,
                                                                    "--manifest", manifest]).items()}
    blobs = benchmark_images(manifest)
    result = {}
    for precision, files in (("fp32", None), ("int8", int8_files)):
        pipeline = LocalPipeline(repository, onnx_files=files)
        raw = raw_bench.measure(repository, blobs, batches=(8,), onnx_files=files)
        result[precision] = {**model_ms(pipeline, blobs), "raw_img_s": raw["raw_img_s"],
                             **scores(evaluate(manifest, "test", None, repository, onnx_files=files))}
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
    result["int8_files"] = int8_files
    return result


def main(argv: list[str] | None = None) -> dict:
    from training.data.manifest import DEFAULT_MANIFEST

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--out", default="build/int8")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.repository, args.out, args.manifest)
    Path(args.out, "int8_results.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return result
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
