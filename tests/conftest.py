"""Shared fixtures: the real data in ../shared, the built repository and a running Triton server; helpers
for the reliability tests (closed-loop :class:`Load`, :func:`write_artifact`)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__import__("os").environ.get("CXR_DATA", REPO.parent / "shared" / "data" / "cxr"))
ARTIFACTS = REPO / "build" / "test-artifacts"
REPOSITORY = Path(__import__("os").environ.get("CXR_REPOSITORY", REPO / "build" / "model_repository"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "manifest.csv").exists():
        pytest.fail(f"this test needs the CXR data set: no manifest.csv in {DATA} (the team's copy is ../shared/data/cxr "
                    "beside the checkout; elsewhere set CXR_DATA to a folder holding manifest.csv)", pytrace=False)
    return DATA


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A self-signed CA, a server certificate for localhost and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cxr-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, extra in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


@pytest.fixture(scope="session")
def test_rows(data_dir):
    from training.data.manifest import read_manifest

    return read_manifest(data_dir / "manifest.csv", "test")


@pytest.fixture(scope="session")
def xray_jpeg(test_rows) -> bytes:
    """A real test-split chest X-ray (JPEG bytes) with a lung mask."""
    return next(r for r in test_rows if r.mask is not None).image.read_bytes()


@pytest.fixture(scope="session")
def xray_pixels(xray_jpeg) -> np.ndarray:
    from cxr.pixels import decode_image

    return decode_image(xray_jpeg).pixels


@pytest.fixture(scope="session")
def corpus_source(xray_jpeg, xray_pixels):
    from tests.corpus import Source

    return Source(xray_pixels.astype(np.uint8), xray_jpeg)


@pytest.fixture(scope="session")
def corpus(corpus_source) -> dict[str, bytes]:
    """The bad-input corpus (tests/corpus.py), built once: case name -> bytes."""
    from tests.corpus import build

    return build(corpus_source)


@pytest.fixture(scope="session")
def repository() -> Path:
    """The repository `make test` builds from the shipped weights (built here if missing)."""
    if not (REPOSITORY / "build.json").exists():
        from export.build_repository import build_repository

        build_repository(REPOSITORY)
    return REPOSITORY


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    """A real Triton server on the built repository, on free ports, for the whole session."""
    from ops.ports import free_port
    from ops.server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(repository, free_port(), free_port(), free_port(), log_path=log)
    server.start(timeout_s=240)
    yield server
    server.stop()


def write_artifact(name: str, payload: dict) -> Path:
    """Record what a reliability test measured (build/test-artifacts/NAME.json; the README quotes them)."""
    import json

    path = ARTIFACTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


class Answer(NamedTuple):
    sent: float  # time.monotonic() when the request was sent
    answered: float
    error: str | None
    release: int | None  # the release that answered (from the triage payload)
    attempts: int  # 1 + the client's retries


class Load:
    """Closed-loop clients (:class:`benchmarks.load.ClosedLoop`) sending real images without pause until the
    ``with`` block ends; ``answers`` holds one :class:`Answer` per request (the client retries transient errors,
    as a PACS integration does)."""

    def __init__(self, url: str, images: list[bytes], clients: int = 3) -> None:
        from benchmarks.load import ClosedLoop
        from client.grpc_client import TriageClient

        self.client = TriageClient(url, outputs=("triage",))
        self.answers: list[Answer] = []
        self.loop = ClosedLoop(self.client.triage, images, clients, lambda sent, answered, out: self.answers.append(
            Answer(sent, answered, out.error, out.triage.get("release"), out.attempts)))

    def __enter__(self) -> "Load":
        self.loop.start()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.stop(60)
        self.client.close()
