"""A PACS integration installs ``pip install ".[client]"`` (no torch, no onnxruntime): the client side must run
without the training and inference stacks. Checked by importing with those packages made unimportable."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from client.samples import BUNDLED

# Everything the [client] and [gateway] extras leave out (pyproject.toml).
HEAVY = ("torch", "torchvision", "onnxruntime", "onnx", "timm", "segmentation_models_pytorch", "albumentations",
         "sklearn", "matplotlib", "pytorch_grad_cam", "lime", "yaml")
CLIENT_MODULES = ("client.grpc_client", "client.classify", "client.files", "client.dicom_files", "client.samples",
                  "gateway.service", "gateway.web", "gateway.spool", "cli.main", "cli.classify")

_BLOCK = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is not installed (light client)")
sys.meta_path.insert(0, Block())
"""


def _light(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=timeout)


def test_client_modules_import_without_torch_or_onnxruntime():
    done = _light(f"import importlib\nfor m in {CLIENT_MODULES!r}: importlib.import_module(m)\n"
                  "from cli.main import main\nmain(['classify', '--help'])")
    assert done.returncode == 0, done.stderr
    assert "usage: cxr classify" in done.stdout


@pytest.mark.triton
def test_light_client_triages_over_grpc(triton):
    sample = sorted(BUNDLED.glob("normal_*.jpg"))[0]
    done = _light(f"from cli.main import main\nraise SystemExit(main(['classify', '--json', '--url', {triton.grpc_url!r}, "
                  f"{str(sample)!r}]))", timeout=180)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    result = json.loads(line)
    assert result["file"] == str(sample) and result["label"] and result["triage"]["priority"]
    assert "1 files in" in done.stderr and "1 triaged" in done.stderr
