"""The practical limit: the served pipeline's own code and ONNX files run back-to-back in one process.

    python -m benchmarks.raw [--repository build/model_repository] [--batch 1 4 8 16] [--json]

Per batch size it times decode + preprocess, segmentation, classification and routing on the same
real encoded images the served benchmark sends, with no server, queue or copies in between.
``raw_img_s`` is the best batch size's end-to-end rate. ``gate_ms`` / ``gate_share``: the safety gate's
part of routing (features + verdict), timed on its own, per image and as a share of the whole. Model-only GFLOP/s is reported against the
~180 GFLOP/s ONNX Runtime reaches for dense convolutions on this CPU.
"""
from __future__ import annotations

import argparse
import json
import time

from benchmarks.images import benchmark_images
from cxr.gate import batch_features
from cxr.lungmask import postprocess_mask
from cxr.pipeline import LocalPipeline
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION


def model_gmacs() -> dict[str, float]:
    """Multiply-accumulates per image of each served model, as ``cxr flops`` counts them (no weights loaded)."""
    from benchmarks.flops import count_spec  # PyTorch (the MAC counter)

    return {spec.role: count_spec(spec)["gmacs"] for spec in (LUNG_SEGMENTATION, CLASSIFIER)}


def time_batches(pipeline: LocalPipeline, blobs: list[bytes], batch: int, images: int) -> dict:
    """Seconds per image of each stage, over ``images`` images in batches of ``batch``."""
    stages = {"preprocess": 0.0, "segmentation": 0.0, "classification": 0.0, "routing": 0.0}
    gate_s, done = 0.0, 0
    pipeline.run_batch(blobs[:batch])  # warm-up: first-run allocations
    while done < images:
        chunk = [blobs[(done + i) % len(blobs)] for i in range(batch)]
        t0 = time.perf_counter()
        seg_in, cls_in = pipeline.prepare(chunk)
        t1 = time.perf_counter()
        raw = pipeline.segment(seg_in)
        t2 = time.perf_counter()
        probs, cam = pipeline.classify(cls_in, raw)
        t3 = time.perf_counter()
        pipeline.route(probs, cam, raw, cls_in)
        t4 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[key] += dt
        gate_s += _gate_seconds(pipeline, raw, cls_in, cam)
        done += batch
    total = sum(stages.values())
    return {"batch": batch, "img_s": done / total, **{f"{k}_ms": 1e3 * v / done for k, v in stages.items()},
            "gate_ms": 1e3 * gate_s / done, "gate_share": gate_s / total}


def _gate_seconds(pipeline: LocalPipeline, raw, cls_in, cam) -> float:
    """Seconds the safety gate's part of routing takes for this batch (features + verdict), timed on its own
    (it is also inside ``routing``); 0 for a release without a gate."""
    gate = pipeline.thresholds.gate
    if gate is None:
        return 0.0
    masks = [postprocess_mask(r[0]) for r in raw]  # routing cleans the masks with or without a gate
    started = time.perf_counter()
    for vector in batch_features(masks, raw, cls_in, cam):
        gate.judge(vector)
    return time.perf_counter() - started


def measure(repository: str, blobs: list[bytes], batches=(1, 4, 8, 16), images: int = 64, threads: int = 2) -> dict:
    """``{"raw_img_s", "best_batch", "rows": [...], "gmacs", "model_gflop_s"}``."""
    pipeline = LocalPipeline(repository, threads=threads)
    rows = [time_batches(pipeline, blobs, b, max(images, b)) for b in batches]
    best = max(rows, key=lambda r: r["img_s"])
    gmacs = model_gmacs()
    model_s = (best["segmentation_ms"] + best["classification_ms"]) / 1e3
    return {
        "raw_img_s": best["img_s"],
        "best_batch": best["batch"],
        "rows": rows,
        "gmacs": gmacs,
        "model_gflop_s": 2 * sum(gmacs.values()) / model_s,
        "segmentation_gflop_s": 2 * gmacs[LUNG_SEGMENTATION.role] / (best["segmentation_ms"] / 1e3),
    }


def print_table(result: dict) -> None:
    print(f"{'batch':>5} {'img/s':>7} {'prep ms':>8} {'seg ms':>7} {'cls ms':>7} {'route ms':>8} {'(gate ms':>9} {'share)':>7}")
    for r in result["rows"]:
        print(f"{r['batch']:>5} {r['img_s']:>7.2f} {r['preprocess_ms']:>8.2f} {r['segmentation_ms']:>7.2f} "
              f"{r['classification_ms']:>7.2f} {r['routing_ms']:>8.2f} {r['gate_ms']:>9.2f} {100 * r['gate_share']:>6.1f}%")
    print(f"raw limit {result['raw_img_s']:.2f} img/s at batch {result['best_batch']}; models run at "
          f"{result['model_gflop_s']:.0f} GFLOP/s (segmentation {result['segmentation_gflop_s']:.0f}; "
          f"GMACs/img {result['gmacs']})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.repository, benchmark_images(), tuple(args.batch), args.images)
    print(json.dumps(result)) if args.json else print_table(result)
    return result


if __name__ == "__main__":
    main()
