"""A built repository runs the runtime code it carries, not the host's: its python models import the `cxr` copied
beside them even where this checkout's `cxr` is installed (as it is here, editable, on every sys.path).

The copy inside one model of a scratch repository is changed so that its answer shows which code ran; a host
import would give the checkout's answer instead.
"""
from __future__ import annotations

import shutil

import pytest

from client.grpc_client import TriageClient
from cxr.specs import PREPROCESS
from ops.ports import free_port
from ops.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_python_models_import_the_repository_copy_of_cxr(repository, tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo)
    copied = repo / PREPROCESS.role / "1" / "cxr" / "pixels.py"
    text = copied.read_text()
    assert '"empty input (0 bytes)"' in text
    copied.write_text(text.replace('"empty input (0 bytes)"', '"empty input (0 bytes; from the repository copy)"'))
    with TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log") as server:
        out = TriageClient(server.grpc_url, retries=0).triage(b"")
    assert out.error is not None and "from the repository copy" in out.error, out.error
