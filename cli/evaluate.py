"""``cxr evaluate``: metrics of the shipped models on a manifest split (see :mod:`client.evaluate`)."""
from __future__ import annotations

import argparse

from client.evaluate import run
from training.data.manifest import DEFAULT_MANIFEST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr evaluate", description=__doc__)
    parser.add_argument("--manifest", action="append", default=None,
                        help="CSV in the shared manifest format (repeat for several; default: the shared cxr set)")
    parser.add_argument("--split", default="test", help="train/val/test or 'all'")
    parser.add_argument("--url", help="evaluate through the served ensemble at HOST:PORT (default: ONNX in-process)")
    parser.add_argument("--repository", default="build/model_repository", help="built repository (ONNX path)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return run(args.manifest or [str(DEFAULT_MANIFEST)], None if args.split == "all" else args.split, args.url,
               args.repository, args.json)
