"""``cxr classify``: triage image files (DICOM/PNG/JPEG) over gRPC; one line (or JSON object) per image."""
from __future__ import annotations

import argparse

from client.classify import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr classify", description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC HOST:PORT")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    return run(args.paths, args.url, args.json, args.concurrency)
