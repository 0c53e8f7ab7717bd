"""A real gRPC load balancer in front of Triton replicas: Debian's nginx with ``grpc_pass``, on one machine.

The shape of a Kubernetes Service over a Deployment's pods: clients call one address, nginx spreads the
requests over the replicas (round robin) and sends a request whose replica refuses the connection or is gone
to the next one (``grpc_next_upstream``; inference is a pure function of the image, so a resend is safe). A
replica that fails is left out for ``fail_timeout_s``. nginx runs in the foreground, one process
(``master_process off``), with its config, logs and temp files in a private folder.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cxr.errors import ServerError
from cxr.pixels import MAX_BYTES

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream triton {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size {max_body};
        location / {{
            grpc_pass grpc://triton;
            grpc_next_upstream error timeout http_502 http_503 non_idempotent;
            grpc_next_upstream_tries {tries};
            grpc_connect_timeout 2s;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
    }}
}}
"""


def nginx_config(upstreams: list[str], port: int, root: Path, fail_timeout_s: float = 5.0) -> str:
    """The nginx config that balances gRPC on ``127.0.0.1:port`` over ``upstreams`` (``HOST:PORT`` each)."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout={fail_timeout_s:g}s;" for u in upstreams)
    return CONFIG.format(root=root, servers=servers, port=port, max_body=MAX_BYTES + 2**20, tries=len(upstreams))


class GrpcBalancer:
    """Run nginx balancing gRPC over ``upstreams`` on ``port``; usable as a context manager.

    Raises:
        ServerError: nginx is not installed (``make setup`` installs it) or did not start listening.
    """

    def __init__(self, upstreams: list[str], port: int, fail_timeout_s: float = 5.0) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise ServerError("nginx is not installed (Debian package nginx; make setup installs it)")
        self.binary, self.upstreams, self.port = binary, list(upstreams), port
        self.root = Path(tempfile.mkdtemp(prefix="cxr-nginx-"))
        (self.root / "nginx.conf").write_text(nginx_config(self.upstreams, port, self.root, fail_timeout_s))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "GrpcBalancer":
        check = subprocess.run([self.binary, "-t", "-c", str(self.root / "nginx.conf")], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(f"nginx refused its config: {check.stderr.strip()}")
        self.process = subprocess.Popen([self.binary, "-c", str(self.root / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"nginx exited with {self.process.returncode}: {self.process.stderr.read().decode()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"nginx did not listen on {self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "GrpcBalancer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
