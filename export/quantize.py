"""INT8 static quantization (QDQ) of the served ONNX graphs with ONNX Runtime, calibrated on training images.

    python -m export.quantize [--repository build/model_repository] [--out build/int8] [--calibration 64]
    python -m export.quantize --answers answers.npz [--out build/int8]   # this CPU's answers of those graphs

Activations uint8, weights int8 per channel with **7-bit range** (``reduce_range``: weights in [-64, 64]).
Why 7 bits: on x86 without VNNI (AVX2 only, e.g. AMD EPYC Rome/Milan), ONNX Runtime's u8 x s8 kernels sum
pairs of products into a saturating 16-bit lane (VPMADDUBSW); with full-range weights 2 x 255 x 127 overflows
it and the answers change with the CPU (seen: mean |p_int8 - p_fp32| 0.077 on AVX2 vs 0.028 on AVX-512 VNNI,
the same graph). With 7-bit weights a pair is at most 2 x 255 x 64 = 32,640 < 32,767: no lane saturates, the
integer sums are exact on every x86-64 CPU, and AVX2 and VNNI hosts give bit-identical answers (checked under
``qemu-x86_64 -cpu EPYC-Rome``, see ``tests/export/test_quantize.py``), at the u8s8 kernels' speed. U8U8 (uint8
weights) is also exact everywhere but ~1.5x slower on VNNI hosts.

MinMax calibration over ``--calibration`` train-split images decoded and preprocessed exactly as served.
The classifier is calibrated with the FP32 segmenter's masks, which is what it gets when served.
Writes ``<out>/<role>.onnx``; :func:`agreement` scores them against FP32 on this CPU (the bounds a served INT8
profile must hold, :data:`BOUNDS`); ``python -m benchmarks.int8`` measures them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxr.pipeline import LocalPipeline
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION, ModelSpec
from export.pbtxt import INT8_ROLES
from training.data.manifest import DEFAULT_MANIFEST, evenly, read_manifest
from training.metrics import iou_dice

FORMAT = "onnxruntime static QDQ, U8S8 per-channel, 7-bit weights (reduce_range), MinMax"
BOUNDS = {"mask_iou": 0.97, "mean_abs_dp": 0.05, "top1_agreement": 0.8}
"""What INT8 answers must hold against FP32 on real images: mean lung-mask IoU and top-1 agreement at least,
mean |p_int8 - p_fp32| at most. ``build_repository --profile cpu-int8`` refuses a host that misses one."""
CHECK_IMAGES = 48  # val images of the build-time check (12 are too few: one flipped near-tie moves top-1 by 0.08)


class _Reader:
    """ONNX Runtime calibration reader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def calibration_feeds(repository: Path, blobs: list[bytes], batch: int = 8) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per role, the feeds the served graph receives for ``blobs``."""

    fp32 = {role: repository / role / "1" / "model.onnx" for role in INT8_ROLES}
    pipeline = LocalPipeline(repository, onnx_files=fp32)
    feeds = {LUNG_SEGMENTATION.role: [], CLASSIFIER.role: []}
    for start in range(0, len(blobs), batch):
        seg_in, cls_in = pipeline.prepare(blobs[start : start + batch])
        masks = pipeline.segment(seg_in)
        feeds[LUNG_SEGMENTATION.role].append({LUNG_SEGMENTATION.inputs[0].name: seg_in})
        feeds[CLASSIFIER.role].append(CLASSIFIER.feeds(cls_in, masks))
    return feeds


def quantize(spec: ModelSpec, source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Write the QDQ INT8 version of ``source`` to ``target``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(
        str(prepared),
        str(target),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,  # 7-bit weights: exact on AVX2 as on VNNI (module docstring)
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink()
    return target


def quantize_repository(repository: str | Path, out: str | Path, blobs: list[bytes]) -> dict[str, Path]:
    """INT8 graphs of both served ONNX models; ``{role: path}``."""
    repository, out = Path(repository), Path(out)
    feeds = calibration_feeds(repository, blobs)
    return {
        spec.role: quantize(spec, repository / spec.role / "1" / "model.onnx", out / f"{spec.role}.onnx", feeds[spec.role])
        for spec in (LUNG_SEGMENTATION, CLASSIFIER)
    }


def calibration_blobs(count: int = 64, manifest: str | Path | None = None, split: str = "train") -> list[bytes]:
    """``count`` images of ``split`` spread evenly over the manifest (labels and sources), deterministic."""

    return [r.image.read_bytes() for r in evenly(read_manifest(manifest or DEFAULT_MANIFEST, split), count)]


def answers(repository: str | Path, blobs: list[bytes], onnx_files: dict[str, str | Path] | None = None) -> dict:
    """Raw lung masks (thresholded) and class probabilities of the segmenter and classifier on ``blobs``.

    Computed directly from the two graphs (no cascade, no post-processing): what the quantization changes.
    """

    pipeline = LocalPipeline(repository, onnx_files=onnx_files)
    seg_in, cls_in = pipeline.prepare(blobs)
    masks = pipeline.segment(seg_in)
    return {"masks": (masks > 0.5).astype(np.uint8), "probabilities": pipeline.classify(cls_in, masks)[0]}


def agreement(fp32: dict, int8: dict) -> dict:
    """Mean mask IoU, mean |dp| (over images and classes), largest |dp| and top-1 agreement of two
    :func:`answers`; ``holds`` says whether :data:`BOUNDS` hold, ``failed`` names the ones that do not."""

    ious = [iou_dice(a[0], b[0])[0] for a, b in zip(fp32["masks"], int8["masks"])]
    diff = np.abs(fp32["probabilities"] - int8["probabilities"])
    result = {"mask_iou": float(np.mean(ious)), "mean_abs_dp": float(diff.mean()), "max_abs_dp": float(diff.max()),
              "top1_agreement": float(np.mean(fp32["probabilities"].argmax(1) == int8["probabilities"].argmax(1))),
              "images": len(ious)}
    failed = [k for k in ("mask_iou", "top1_agreement") if result[k] < BOUNDS[k]]
    failed += ["mean_abs_dp"] if result["mean_abs_dp"] > BOUNDS["mean_abs_dp"] else []
    return {**result, "holds": not failed, "failed": failed}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--out", default="build/int8")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--calibration", type=int, default=64, help="train-split images used for calibration")
    parser.add_argument("--answers", help="quantize nothing: write this CPU's answers of the INT8 graphs already in "
                        "--out on the check images (val split) to this .npz (to compare hosts)")
    args = parser.parse_args(argv)
    if args.answers:
        files = {role: Path(args.out) / f"{role}.onnx" for role in INT8_ROLES}
        np.savez(args.answers, **answers(args.repository, calibration_blobs(CHECK_IMAGES, args.manifest, "val"), files))
        print(f"{args.answers}: answers of {sorted(map(str, files.values()))} on {CHECK_IMAGES} val images")
        return {}
    paths = quantize_repository(args.repository, args.out, calibration_blobs(args.calibration, args.manifest))
    for role, path in paths.items():
        print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return paths


if __name__ == "__main__":
    main()
