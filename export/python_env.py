"""A packed python environment for the repository's python models (the python backend's ``EXECUTION_ENV_PATH``).

    python -m export.python_env --out build/python_env.tar.gz      # make python-env
    python -m export.build_repository --python-env build/python_env.tar.gz

A fresh venv on this interpreter's base Python with only what the python models import (pyproject's runtime
dependencies and onnxruntime for the CPU profiles' ONNX adapter), at the versions of ``requirements/lock.txt``,
packed with venv-pack. Triton unpacks it once per model and runs the model's stub in it, so the steps import
these packages, not whatever the host's site-packages hold. venv-pack keeps the interpreter a link to the base
Python, so the archive runs where that Python lives at the same path (this machine, CI, an image built from the
same base); NVIDIA's Triton image embeds Python 3.10 and uses the serving image's baked-in packages instead
(deploy/docker/Dockerfile.triton).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import venv_pack

from cxr.paths import REPO

LOCK = REPO / "requirements" / "lock.txt"
EXTRA = ("onnxruntime",)  # the CPU profiles run the ONNX models in python models too


def requirements() -> list[str]:
    """``name==version`` for every runtime dependency and :data:`EXTRA`, as the lock pins them."""
    from packaging.requirements import Requirement

    pins = {line.split("==")[0].lower(): line.strip() for line in LOCK.read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    names = [Requirement(r).name for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    missing = [n for n in (*names, *EXTRA) if n.lower() not in pins]
    if missing:
        raise ValueError(f"{LOCK} pins none of {missing}")
    return [pins[n.lower()] for n in (*names, *EXTRA)]


def pack(out: str | Path, python: str | None = None) -> Path:
    """Build the environment with ``python`` (default: this interpreter's base) and write it to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    python = python or getattr(sys, "_base_executable", sys.executable)
    with tempfile.TemporaryDirectory(prefix="cxr-python-env-") as tmp:
        env = Path(tmp) / "env"
        subprocess.run([python, "-m", "venv", str(env)], check=True)
        subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-cache-dir", *requirements()], check=True)
        venv_pack.pack(prefix=str(env), output=str(out), force=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.python_env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "build" / "python_env.tar.gz"))
    args = parser.parse_args(argv)
    path = pack(args.out)
    print(f"packed {len(requirements())} requirements into {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
