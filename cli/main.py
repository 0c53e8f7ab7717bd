"""``cxr COMMAND ...``: dispatch to the command's module, which parses its own arguments.

A command's module is imported only when that command runs, so ``cxr classify`` loads only what a PACS
integration installs (``pip install .[client]``), not PyTorch. Any :class:`cxr.errors.CxrError` (and the
``OSError``/``ValueError`` of a bad path or value) ends the command with one line on stderr and status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cxr.errors import CxrError

# command -> one-line description; the module is cli/<command with - as _>.py
COMMANDS = {
    "serve": "run Triton (CPU, from the nvidia-pytriton wheel) in the foreground",
    "classify": "triage image files (DICOM/PNG/JPEG) over gRPC",
    "evaluate": "metrics of the shipped models on a manifest split, with bootstrap intervals",
    "build-repository": "export ONNX (parity-checked) and write the Triton repository",
    "gateway": "DICOM gateway: Storage SCP -> spool -> Triton -> SR/SEG/SC to the PACS, HL7/FHIR to the worklist",
    "backfill": "triage past studies found by QIDO-RS / fetched by WADO-RS",
    "explain": "Grad-CAM or LIME overlay for one image (PNG)",
    "models": "publish/gate/promote/roll back model releases",
    "thresholds": "fit triage thresholds (fit) and the safety gate (gate) on labelled data",
    "bench": "served vs raw ONNX Runtime vs a naive Flask server, FP32 and INT8",
    "flops": "MACs/params of every model vs the papers' tables",
    "report": "train/evaluate candidate classifiers with seeds; write the comparison table",
}


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray triage on Triton Inference Server.",
                                     epilog="cxr COMMAND --help describes a command's arguments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        command_parser().parse_args(argv[:1])  # prints the command list (--help) or names the unknown command
        return 2
    module = importlib.import_module(f"cli.{argv[0].replace('-', '_')}")
    try:
        result = module.main(argv[1:])
    except (CxrError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
