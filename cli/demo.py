"""``make demo``: start Triton on the built repository, triage the sample images over gRPC, stop it."""
from __future__ import annotations

import argparse
import sys

from client.classify import run
from client.samples import write_samples
from ops.ports import free_port
from ops.server import TritonServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--samples", default="build/samples")
    parser.add_argument("--grpc-port", type=int, help="default: a free port (as are the HTTP and metrics ports)")
    args = parser.parse_args()
    write_samples(args.samples)
    grpc_port = args.grpc_port or free_port()
    server = TritonServer(args.repository, grpc_port=grpc_port, http_port=free_port(), metrics_port=free_port())
    print(f"starting Triton (log {server.log_path}) ...", flush=True)
    with server:
        print(f"Triton ready on gRPC :{grpc_port}; triaging {args.samples}\n", flush=True)
        code = run([args.samples], server.grpc_url, as_json=False)
    print("\nserver stopped. (broken_truncated.jpg is rejected on purpose: a bad input gets a clear error.)")
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
