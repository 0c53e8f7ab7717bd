"""Files every model repository build shares: the python models' source with the runtime package beside it,
content digests of weights (what a model version string and the export cache key on), and the packed python
environment the python models may run in."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cxr.model_config import parse, render
from cxr.paths import REPO

SOURCES = REPO / "model_repository"
ONNX_ADAPTER = "onnx_runtime"  # the python model that runs an ONNX graph with onnxruntime (cpu profiles)
RUNTIME = "cxr"  # the package the python models import; the only code of ours a repository ships


def sha256(path: Path) -> str:
    """Streamed: a packed environment is hundreds of MB."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def install_python_model(source: str, version_dir: Path) -> None:
    """Put ``model_repository/<source>/model.py`` and a copy of the ``cxr`` package into a python model's
    version folder (the repository is self-contained: it runs on any Triton host without this checkout)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCES / source / "model.py", version_dir / "model.py")
    target = version_dir / RUNTIME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / RUNTIME, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


PYTHON_ENV = "python_env.tar.gz"  # at the repository root: one archive for every python model
EXECUTION_ENV_PATH = f"$$TRITON_MODEL_DIRECTORY/../{PYTHON_ENV}"  # the python backend expands the variable


def use_python_env(repository: Path, archive: Path) -> list[str]:
    """Put ``archive`` (:mod:`export.python_env`) at the repository root and point every python model's config at
    it (``EXECUTION_ENV_PATH``); returns the models changed."""
    target = repository / PYTHON_ENV
    if Path(archive).resolve() != target.resolve():
        shutil.copy(archive, target)
    changed = []
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = parse(path.read_text())
        if config.backend == "python":
            config.parameters["EXECUTION_ENV_PATH"].string_value = EXECUTION_ENV_PATH
            path.write_text(render(config))
            changed.append(config.name)
    return changed
