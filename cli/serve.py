"""``cxr serve``: run Triton on a model repository in the foreground, admin APIs locked by a key."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from cxr.admin_key import ensure_key, key_file_for
from cxr.cpu import describe_cpu, int8_host_note
from cxr.errors import ServerError
from ops.server import TLSConfig, TritonServer


def parser() -> argparse.ArgumentParser:
    serve = argparse.ArgumentParser(prog="cxr serve", description=__doc__)
    serve.add_argument("--model-repository", default="build/model_repository")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-file", help="server log (default: a temp file)")
    serve.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    serve.add_argument("--admin-key-file", help="key for the restricted APIs (created, mode 600, if missing; "
                                                "default: admin.key beside the model repository)")
    serve.add_argument("--no-restrict", action="store_true", help="leave the admin APIs open (not recommended)")
    serve.add_argument("--grpc-cert", help="PEM server certificate: serve gRPC over TLS")
    serve.add_argument("--grpc-key", help="PEM server key")
    serve.add_argument("--grpc-root-cert", help="PEM CA that signs client certificates (mutual TLS)")
    serve.add_argument("--grpc-mutual", action="store_true", help="require client certificates")
    return serve


def check_int8_host(repository: Path) -> None:
    """An INT8 repository says at start which CPU its answers were checked on, and whether this host is of
    the same ISA class (:func:`cxr.cpu.int8_host_note`)."""
    build = repository / "build.json"
    manifest = json.loads(build.read_text()) if build.exists() else {}
    if manifest.get("profile") != "cpu-int8":
        return
    same, message = int8_host_note(manifest.get("int8"), describe_cpu())
    print(f"{'' if same else 'WARNING: '}{message}", file=sys.stdout if same else sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tls = None
    if args.grpc_cert or args.grpc_key:
        tls = TLSConfig(Path(args.grpc_cert), Path(args.grpc_key), Path(args.grpc_root_cert) if args.grpc_root_cert else None,
                        mutual=args.grpc_mutual)
    key_file = Path(args.admin_key_file) if args.admin_key_file else key_file_for(args.model_repository)
    key = None if args.no_restrict else ensure_key(key_file)
    server = TritonServer(args.model_repository, args.grpc_port, args.http_port, args.metrics_port, args.log_file,
                          admin_key=key, tls=tls)
    check_int8_host(Path(args.model_repository))
    print(f"starting Triton on {args.model_repository} (log: {server.log_path}) ...", flush=True)
    if key:
        print(f"model-repository/shared-memory/logging/trace APIs need header cxr-admin-key (key in {key_file})")
    try:
        server.start(timeout_s=args.timeout)
    except ServerError as exc:
        raise ServerError(f"{str(exc).splitlines()[0]} (server log: {server.log_path})") from None
    print(f"ready: gRPC :{args.grpc_port}  HTTP :{args.http_port}  metrics :{args.metrics_port}  (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0
