"""The python models run in the packed environment (EXECUTION_ENV_PATH), not in the host's site-packages: every
python-model stub of a repository built with it maps numpy from the unpacked archive, and the ensemble answers.

The check reads each stub process's memory maps, so it fails if Triton ignored the archive (the stubs would map
numpy from this checkout's venv, as they do without it).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import psutil
import pytest

from client.grpc_client import TriageClient
from export.python_env import pack
from export.repository_files import use_python_env
from ops.ports import free_port
from ops.server import TritonServer
from ops.watchdog import stub_instance

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _numpy_roots(pid: int) -> set[str]:
    """Where the process's numpy extension modules were loaded from."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1].rsplit("/numpy/", 1)[0] for line in maps if "/numpy/" in line}


def test_python_models_run_in_the_packed_environment(repository, test_rows, tmp_path):
    archive = pack(tmp_path / "python_env.tar.gz")
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    changed = use_python_env(repo, archive)
    assert {"cxr_preprocess", "triage_router"} <= set(changed)
    host = str(Path(sys.prefix).resolve())
    with TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log") as server:
        out = TriageClient(server.grpc_url).triage(test_rows[0].image.read_bytes())
        stubs = {}
        for child in psutil.Process(server.process.pid).children():
            stub = stub_instance(child.cmdline())
            if stub is not None:
                stubs[stub[0]] = (stub[1], _numpy_roots(child.pid))
    assert out.error is None and out.label
    assert {model for model, _ in stubs.values()} == set(changed)  # every python model, all its instances
    for instance, (model, roots) in stubs.items():
        assert roots and all("python_env" in r and not r.startswith(host) for r in roots), (instance, roots)
