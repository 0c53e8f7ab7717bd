"""INT8 static quantization (QDQ) of the served ONNX graphs with ONNX Runtime, calibrated on training images.

    python -m export.quantize [--repository build/model_repository] [--out build/int8] [--calibration 64]

Activations uint8, weights int8 per channel (the U8S8 layout ONNX Runtime's x86 VNNI kernels run),
MinMax calibration over ``--calibration`` train-split images decoded and preprocessed exactly as served.
The classifier is calibrated with the FP32 segmenter's masks, which is what it gets when served.
Writes ``<out>/<role>.onnx``; ``python -m benchmarks.int8`` measures them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION, ModelSpec
from export.pbtxt import INT8_ROLES


class _Reader:
    """ONNX Runtime calibration reader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def calibration_feeds(repository: Path, blobs: list[bytes], batch: int = 8) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per role, the feeds the served graph receives for ``blobs``."""
    from client.local_pipeline import LocalPipeline

    fp32 = {role: repository / role / "1" / "model.onnx" for role in INT8_ROLES}
    pipeline = LocalPipeline(repository, onnx_files=fp32)
    feeds = {LUNG_SEGMENTATION.role: [], CLASSIFIER.role: []}
    for start in range(0, len(blobs), batch):
        seg_in, cls_in = pipeline.prepare(blobs[start : start + batch])
        masks = pipeline.segment(seg_in)
        feeds[LUNG_SEGMENTATION.role].append({LUNG_SEGMENTATION.inputs[0].name: seg_in})
        feeds[CLASSIFIER.role].append({CLASSIFIER.inputs[0].name: cls_in, CLASSIFIER.inputs[1].name: masks})
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


def calibration_blobs(count: int = 64, manifest: str | Path | None = None) -> list[bytes]:
    """``count`` train-split images spread evenly over the manifest (labels and sources), deterministic."""
    from training.data.manifest import DEFAULT_MANIFEST, read_manifest

    records = read_manifest(manifest or DEFAULT_MANIFEST, "train")
    step = max(1, len(records) // count)
    return [r.image.read_bytes() for r in records[::step][:count]]


def main(argv: list[str] | None = None) -> dict[str, Path]:
    from training.data.manifest import DEFAULT_MANIFEST

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--out", default="build/int8")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--calibration", type=int, default=64, help="train-split images used for calibration")
    args = parser.parse_args(argv)
    paths = quantize_repository(args.repository, args.out, calibration_blobs(args.calibration, args.manifest))
    for role, path in paths.items():
        print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return paths


if __name__ == "__main__":
    main()
