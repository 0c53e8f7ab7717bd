"""``cxr explain``: a Grad-CAM or LIME overlay of the served classifier for one image, as PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from training.explain import explain, write_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr explain", description=__doc__)
    parser.add_argument("file", help="DICOM, PNG or JPEG")
    parser.add_argument("--method", choices=("gradcam", "lime"), default="gradcam")
    parser.add_argument("--out", required=True, help="overlay PNG to write")
    parser.add_argument("--target", help="label to explain (default: the top finding)")
    parser.add_argument("--lime-samples", type=int, default=300)
    args = parser.parse_args(argv)
    result = explain(Path(args.file).read_bytes(), args.method, args.target, lime_samples=args.lime_samples)
    path = write_png(result, args.out)
    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.probabilities.items(), key=lambda kv: -kv[1]))
    print(f"{args.method} for {result.label} ({top}) -> {path}")
    return 0
