"""Build a self-contained Triton model repository from the shipped weights and the specs.

    python -m export.build_repository --out build/model_repository [--profile cpu|cpu-int8|gpu|gpu-trt]

Each ONNX model is exported and parity-checked, every ``config.pbtxt`` is rendered from
:mod:`cxr.specs`, the python models get their source and a copy of the ``cxr`` package beside them,
so the folder can be copied to any Triton host (whose python needs numpy<2, Pillow, OpenCV, SciPy,
pydicom and onnxruntime). The build is release 1 of the repository (see :mod:`export.release`).
``cpu-int8`` adds the INT8 graphs (calibrated on train images from the shared data); ``gpu-trt`` adds
``build_engines.sh``, which builds the TensorRT engines on the GPU host.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from cxr.cpu import describe_cpu
from cxr.labels import LABELS
from cxr.model_config import render
from cxr.paths import THRESHOLDS, WEIGHTS
from cxr.release_record import STATE, VERSIONED, load_state, pins_of
from cxr.specs import ENSEMBLE_NAME, MODEL_SPECS, PREPROCESS
from export.pbtxt import INT8_ROLES, ONNX_FILES, PROFILES, repository_configs
from export.release import model_version_string, save_state, write_configs, write_release
from export.repository_files import ONNX_ADAPTER, PYTHON_ENV, install_python_model, sha256, use_python_env

ENGINE_SCRIPT = "build_engines.sh"


def _export(role: str, onnx_path: Path, weights: Path, digest: str, previous: dict) -> dict:
    """Export unless the same weights were already exported there; returns the parity record."""
    from export.onnx import export_onnx  # PyTorch: only when the weights changed

    cached = previous.get("models", {}).get(role, {})
    if onnx_path.exists() and cached.get("weights_sha256") == digest:
        return cached["parity"]
    parity = export_onnx(MODEL_SPECS[role], onnx_path, weights)
    return {"max_abs_diff": parity.max_abs_diff, "mask_agreement": parity.mask_agreement}


def _quantize(out: Path, calibration: int = 64) -> dict:
    """Write ``model.int8.onnx`` beside each FP32 graph (see :mod:`export.quantize`) and check it on this CPU.

    Raises:
        Int8Refused: the INT8 answers on this host miss :data:`export.quantize.BOUNDS` against FP32 (the INT8
            graphs are removed again; the message names the CPU and its ISA class).
    """
    # cpu-int8 only (onnxruntime.quantization)
    from export.quantize import CHECK_IMAGES, FORMAT, agreement, answers, calibration_blobs, quantize_repository

    paths = quantize_repository(out, out / ".int8", calibration_blobs(calibration))
    served = {role: out / role / "1" / ONNX_FILES["cpu-int8"] for role in paths}
    for role, path in paths.items():
        shutil.move(path, served[role])
    shutil.rmtree(out / ".int8", ignore_errors=True)
    host = describe_cpu()
    check = calibration_blobs(CHECK_IMAGES, split="val")
    fp32 = {role: out / role / "1" / "model.onnx" for role in paths}
    result = agreement(answers(out, check, fp32), answers(out, check, served))
    if not result["holds"]:
        for path in served.values():
            path.unlink()
        raise Int8Refused(
            f"cpu-int8 refused on this host: {host['model']} ({host['isa']}; flags {' '.join(host['flags'])}) misses "
            f"the INT8 agreement bounds {result['failed']} on {result['images']} val images ({result}); serve the "
            "FP32 profile (--profile cpu) here"
        )
    return {"calibration_images": calibration, "format": FORMAT, "host": host, "agreement": result}


class Int8Refused(RuntimeError):
    """This CPU cannot hold the INT8 agreement bounds; ``build_repository --profile cpu-int8`` stops."""


def _int8_current(out: Path, manifest: dict, previous: dict) -> bool:
    """The INT8 graphs on disk were quantized from the same weights (like the ONNX export cache), in today's
    format, and checked on a CPU of this host's ISA class."""
    from export.quantize import FORMAT  # cpu-int8 only (onnxruntime.quantization)

    record = previous.get("int8", {})
    return record.get("format") == FORMAT and record.get("host", {}).get("isa") == describe_cpu()["isa"] and all(
        previous["models"].get(role, {}).get("weights_sha256") == manifest["models"][role]["weights_sha256"]
        and (out / role / "1" / ONNX_FILES["cpu-int8"]).exists()
        for role in INT8_ROLES
    )


def _write_engine_script(out: Path) -> None:
    """``build_engines.sh``: the trtexec commands, relative to the repository, for the GPU host."""
    from export.tensorrt import build_engines  # gpu-trt only

    lines = ["#!/bin/sh", "# Build the TensorRT engines on the GPU host (inside the NGC TensorRT/Triton container).",
             'cd "$(dirname "$0")"', "set -e"]
    for command in build_engines(out, print_only=True):
        lines.append(" ".join(["trtexec", *(c.replace(f"{out}/", "") for c in command[1:])]))
    script = out / ENGINE_SCRIPT
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)


def _pin_serving_release(out: Path, release_1: dict) -> None:
    """Create ``releases.json`` (release 1 = this build) on first build; pin the configs to the serving release.

    Releases published later (``cxr models publish``) survive a rebuild: their versions are not touched and
    the configs keep pinning whichever release serves.
    """
    if (out / STATE).exists():
        state = load_state(out)
        state["releases"]["1"].update(release_1)
    else:
        state = {"serving": 1, "history": [{"release": 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}],
                 "releases": {"1": {**release_1, "status": "serving", "note": "build_repository", "gates": []}}}
    save_state(out, state)
    write_configs(out, pins_of(state))


def build_repository(out: str | Path, profile: str = "cpu", weights_dir: str | Path = WEIGHTS, threads: int = 2,
                     python_env: str | Path | None = None) -> dict:
    """Write the repository to ``out``; returns its build manifest (also written as ``out/build.json``).

    ``python_env``: a packed environment (:mod:`export.python_env`) every python model runs in.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    out, weights_dir = Path(out), Path(weights_dir)
    manifest_path = out / "build.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest = {"profile": profile, "models": {}, "thresholds_version": json.loads(THRESHOLDS.read_text())["version"]}
    versions = {}
    for role, spec in MODEL_SPECS.items():
        weights = weights_dir / spec.weights
        if not weights.exists():
            raise FileNotFoundError(f"{role}: weights {weights} missing (train with `make train` or restore weights/)")
        digest = sha256(weights)
        version_dir = out / role / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        parity = _export(role, version_dir / "model.onnx", weights, digest, previous)
        if profile in ONNX_FILES:
            install_python_model(ONNX_ADAPTER, version_dir)
        else:
            (version_dir / "model.py").unlink(missing_ok=True)
            shutil.rmtree(version_dir / "cxr", ignore_errors=True)
        versions[role] = model_version_string(role, 1, digest)
        manifest["models"][role] = {"model": spec.name, "weights": spec.weights, "weights_sha256": digest, "parity": parity}
    if profile == "gpu-trt":
        _write_engine_script(out)
    (out / MODEL_SPECS["cxr_classifier"].role / "labels.txt").write_text("\n".join(LABELS) + "\n")

    install_python_model(f"{PREPROCESS.role}/1", out / PREPROCESS.role / "1")
    release = write_release(out, 1, {role: 1 for role in VERSIONED}, THRESHOLDS, versions)  # release 1: this build
    (out / ENSEMBLE_NAME / "1").mkdir(parents=True, exist_ok=True)

    for name, config in repository_configs(profile, threads).items():
        (out / name / "config.pbtxt").write_text(render(config))
    _pin_serving_release(out, release)
    if python_env is not None:
        manifest["python_env"] = {"archive": PYTHON_ENV, "models": use_python_env(out, Path(python_env)),
                                 "sha256": sha256(Path(python_env))}
    manifest["model_versions"] = versions
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if profile == "cpu-int8":  # calibration runs the finished FP32 pipeline
        manifest["int8"] = previous["int8"] if _int8_current(out, manifest, previous) else _quantize(out)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cxr build-repository", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/model_repository")
    parser.add_argument("--profile", choices=PROFILES, default="cpu")
    parser.add_argument("--weights-dir", default=str(WEIGHTS))
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per model (cpu profile)")
    parser.add_argument("--python-env", help="packed environment for every python model (python -m export.python_env)")
    args = parser.parse_args(argv)
    try:
        manifest = build_repository(args.out, args.profile, args.weights_dir, args.threads, args.python_env)
    except Int8Refused as exc:
        raise SystemExit(str(exc)) from exc
    for role, info in manifest["models"].items():
        print(f"{role}: {info['model']} sha256 {info['weights_sha256'][:12]} parity {info['parity']}")
    if "int8" in manifest:
        host, check = manifest["int8"]["host"], manifest["int8"]["agreement"]
        print(f"int8 checked on {host['model']} ({host['isa']}): mask IoU {check['mask_iou']:.4f}, mean |dp| "
              f"{check['mean_abs_dp']:.4f}, top-1 agreement {check['top1_agreement']:.2f}")
    print(f"repository ({args.profile}) written to {args.out}")


if __name__ == "__main__":
    main()
