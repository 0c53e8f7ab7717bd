"""TensorRT engines (``model.plan``) for the ``gpu-trt`` profile, built from the exported ONNX on the GPU host.

    python -m export.tensorrt --repository build/model_repository_trt [--fp16] [--print-only]

An engine is specific to the GPU and TensorRT version that build it, so it is built where it runs:
inside the NGC TensorRT/Triton container, next to the server (``deploy/ngc/build_engines.sh``).
Each engine gets one optimisation profile whose batch range matches the dynamic batcher:
min 1, opt = the largest ``preferred_batch_size``, max = ``max_batch_size``.

Untested here: this machine has no GPU and no TensorRT. ``--print-only`` prints the ``trtexec``
commands, which is what the tests check.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from cxr.specs import MODEL_SPECS, ModelSpec
from export.pbtxt import PLAN_FILE


def shapes(spec: ModelSpec) -> dict[str, str]:
    """``trtexec`` ``--minShapes/--optShapes/--maxShapes`` values for ``spec``'s inputs."""
    def at(batch: int) -> str:
        return ",".join(f"{t.name}:{'x'.join(str(d) for d in (batch, *t.dims))}" for t in spec.inputs)

    return {"min": at(1), "opt": at(max(spec.preferred_batch_sizes)), "max": at(spec.max_batch_size)}


def trtexec_command(spec: ModelSpec, onnx: Path, plan: Path, fp16: bool = True, trtexec: str = "trtexec") -> list[str]:
    s = shapes(spec)
    command = [trtexec, f"--onnx={onnx}", f"--saveEngine={plan}", f"--minShapes={s['min']}",
               f"--optShapes={s['opt']}", f"--maxShapes={s['max']}", "--skipInference"]
    return command + (["--fp16"] if fp16 else [])


def build_engines(repository: str | Path, fp16: bool = True, print_only: bool = False) -> list[list[str]]:
    """Build ``<role>/1/model.plan`` from ``<role>/1/model.onnx`` for every ONNX model."""
    repository = Path(repository)
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    commands = []
    for spec in MODEL_SPECS.values():
        version_dir = repository / spec.role / "1"
        onnx = version_dir / "model.onnx"
        if not onnx.exists():
            raise FileNotFoundError(f"{onnx} missing: build the repository with --profile gpu-trt first")
        commands.append(trtexec_command(spec, onnx, version_dir / PLAN_FILE, fp16, trtexec))
    if print_only:
        return commands
    if not Path(trtexec).exists():
        raise FileNotFoundError("trtexec not found: run this inside the NGC TensorRT or Triton container on the GPU host")
    for command in commands:
        subprocess.run(command, check=True)
    return commands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository_trt")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false")
    parser.add_argument("--print-only", action="store_true", help="print the trtexec commands, build nothing")
    args = parser.parse_args(argv)
    for command in build_engines(args.repository, args.fp16, args.print_only):
        print(" ".join(command))


if __name__ == "__main__":
    main()
