"""``cxr build-repository``: export ONNX (parity-checked) and write the Triton repository (:mod:`export.build_repository`)."""
from __future__ import annotations

from export.build_repository import main as build


def main(argv: list[str] | None = None) -> int:
    build(argv)
    return 0
