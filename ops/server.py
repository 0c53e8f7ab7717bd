"""Run the real Triton Inference Server 2.51 shipped in the ``nvidia-pytriton`` wheel, on CPU.

The wheel holds ``tritonserver``, the python backend and per-Python-version stubs. We assemble a
backend directory (backend library + the stub for this interpreter), put ``libpython`` and the wheel's
bundled libraries on ``LD_LIBRARY_PATH`` and this environment's ``bin`` first on ``PATH`` so the stub
embeds *this* environment's Python (which must have numpy<2: the stub returns empty tensors with 2.x).
GPU hosts run the NGC ``tritonserver`` container on the same repository instead.

Models are loaded in explicit model-control mode (all at start), so the repository API can reload them. A
:class:`StubWatchdog` does what Triton 2.51's python backend no longer does (triton-inference-server/server
#7862, #8604): when a model's stub process dies, the server still reports ready while that instance fails
every request ("Stub process ... is not healthy"), forever. The watchdog notices the dead stub and reloads
that model through the repository API; Triton swaps the new instances in, the ensemble keeps its name.

Security defaults: the model-repository (load/unload), shared-memory, logging and trace APIs are restricted
on both gRPC and HTTP to requests that carry the admin key (HTTP header ``cxr-admin-key``, gRPC metadata
``triton-grpc-protocol-cxr-admin-key``, as Triton names it)
(:attr:`TritonServer.admin_key`); inference, health, metadata and statistics stay open. gRPC can be served
with TLS, optionally mutual (:class:`TLSConfig`).
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxr.admin_key import ADMIN_HEADER, GRPC_ADMIN_HEADER, RESTRICTED
from cxr.errors import ServerError
from ops.admin import TritonAdmin
from ops.watchdog import STUB_BINARY, StubWatchdog


@dataclass(frozen=True)
class TLSConfig:
    """gRPC TLS: the server's certificate and key, and (for mutual TLS) the CA that signs client certificates."""

    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False

    def flags(self) -> list[str]:
        flags = [f"--grpc-server-cert={self.server_cert}", f"--grpc-server-key={self.server_key}"]
        if self.root_cert is not None:
            flags.append(f"--grpc-root-cert={self.root_cert}")
        return flags + (["--grpc-use-ssl-mutual=true"] if self.mutual else ["--grpc-use-ssl=true"])


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed (make setup installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def prepare_backends(work_dir: Path) -> Path:
    """Create ``work_dir/python`` with the python backend and the stub for this Python version."""
    root = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / STUB_BINARY
    if not stub.exists():
        raise ServerError(f"no python backend stub for Python {version} in {stub.parent.parent}")
    backend = work_dir / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so", root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = backend / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return work_dir


SHM_PREFIX = "triton_python_backend_shm_region_"


def remove_orphaned_shm(shm_dir: Path = Path("/dev/shm")) -> int:
    """Delete python-backend shared-memory regions no live process maps (left by a killed Triton).

    A SIGKILLed server never unlinks its regions (1-5 MB per model instance, growing with traffic); on a host
    that restarts Triton after crashes they would fill ``/dev/shm``. Returns how many were removed.
    """
    regions = {p.name: p for p in shm_dir.glob(f"{SHM_PREFIX}*")} if shm_dir.is_dir() else {}
    if not regions:
        return 0
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue  # the process ended, or is not ours to read (then its regions are not ours either)
        mapped.update(name for name in regions if name in text)
    removed = 0
    for name, path in regions.items():
        if name not in mapped:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# Read once, at import: sysconfig fills its variables lazily and not thread-safely, so two servers started from
# two threads at once could see LIBDIR as None (tests/gateway/test_replica_loss.py did).
PYTHON_LIBDIR = sysconfig.get_config_var("LIBDIR")


# glibc malloc: a fixed mmap threshold sends every large buffer (images, batches) to mmap, so freeing it returns
# the memory (the default threshold rises after the first large frees, and varying batch sizes then fragment the
# heap); two arenas per process instead of 8 per core. 1 MB, not lower: a 256 x 256 float32 working array of one
# image (256 KB) then comes from the heap and is reused; at 128 KB every such array was a fresh mmap whose pages
# fault in, and the router's routing took twice as long (`cxr.cascade.route_batch`, 6.0-8.8 against 2.7-3.7 ms
# per image in-process; README "Reliability"). The serving image sets the same (deploy/docker/Dockerfile.triton).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_ARENA_MAX": "2"}


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [PYTHON_LIBDIR, str(pytriton_root().parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name, value in MALLOC_ENV.items():  # overridable from the environment
        env.setdefault(name, value)
    return env


class TritonServer:
    """Start/stop ``tritonserver`` on a model repository; usable as a context manager.

    Args:
        repository: model repository folder.
        grpc_port, http_port, metrics_port: listening ports (loopback and all interfaces).
        log_path: where the server's output goes (a temp file by default).
        extra_args: more ``tritonserver`` flags.
        admin_key: the key the restricted APIs require (``"auto"``: a random one; ``None``: no restriction).
        tls: serve gRPC over TLS.
        watchdog: reload a model whose python-backend stub process died (:class:`StubWatchdog`).
    """

    def __init__(
        self,
        repository: str | Path,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        log_path: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        admin_key: str | None = "auto",
        tls: TLSConfig | None = None,
        watchdog: bool = True,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir() and any(self.repository.glob("*/config.pbtxt"))):
            raise ServerError(f"{self.repository} is not a model repository (build it: python -m export.build_repository)")
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.extra_args = tuple(extra_args)
        self.admin_key = secrets.token_hex(16) if admin_key == "auto" else admin_key
        self.tls = tls
        self.process: subprocess.Popen | None = None
        self.watchdog = StubWatchdog(self) if watchdog else None

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that unlock the restricted APIs (empty when nothing is restricted)."""
        return {GRPC_ADMIN_HEADER: self.admin_key} if self.admin_key else {}

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = prepare_backends(Path(tempfile.gettempdir()) / f"cxr-triage-backends-{os.getuid()}")
        return [
            str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            "--metrics-config=summary_latencies=true",  # p50/p90/p99 per model (the dashboard's latency panel)
            "--model-control-mode=explicit",
            "--load-model=*",
            "--log-verbose=0",
            *self._security_flags(),
            *self.extra_args,
        ]

    def _security_flags(self) -> list[str]:
        flags = []
        if self.admin_key:
            restriction = f"{','.join(RESTRICTED)}:{ADMIN_HEADER}={self.admin_key}"
            flags += [f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]
        return flags + (self.tls.flags() if self.tls else [])

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        self._check_ports_free()
        remove_orphaned_shm()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
        self.wait_ready(timeout_s)
        if self.watchdog is not None:
            self.watchdog.start()
        return self

    def _check_ports_free(self) -> None:
        """Refuse to start on a port something else holds: readiness would otherwise be read from that server."""
        for what, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-closed server's TIME_WAIT is fine
                try:
                    probe.bind(("0.0.0.0", port))
                except OSError:
                    raise ServerError(f"{what} port {port} is already in use (another Triton?); choose another with "
                                      f"--{what}-port") from None

    @property
    def admin(self) -> TritonAdmin:
        """The repository API of this server (with its admin key)."""
        return TritonAdmin(f"localhost:{self.http_port}", self.admin_key)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://localhost:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # the server's process group: stubs it did not stop (killed server, exit timeout) go too
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        remove_orphaned_shm()

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


