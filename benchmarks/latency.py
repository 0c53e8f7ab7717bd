"""Latency and throughput of the served ``cxr_triage`` ensemble at several concurrencies.

    python -m benchmarks.latency [--url HOST:PORT] [--concurrency 1 4 16] [--requests 64] [--json]

Starts Triton on the built repository unless ``--url`` is given; sends real encoded test-split CXRs
over gRPC (one image per request). Prints a table, or JSON with ``--json``. Numbers, not asserts.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from client.grpc_client import TriageClient
from training.data.manifest import DEFAULT_MANIFEST, read_manifest


def measure(client: TriageClient, blobs: list[bytes], concurrency: int, requests: int) -> dict:
    """Send ``requests`` images with ``concurrency`` in flight; latency percentiles (ms) and img/s."""
    items = [blobs[i % len(blobs)] for i in range(requests)]
    latencies, errors = [], 0
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for out in pool.map(lambda b: client.triage(b), items):
            latencies.append(out.latency_ms)
            errors += out.error is not None
    wall = time.perf_counter() - start
    p = np.percentile(latencies, [50, 90, 95, 99])
    return {"concurrency": concurrency, "requests": requests, "errors": errors, "img_s": requests / wall,
            "p50_ms": p[0], "p90_ms": p[1], "p95_ms": p[2], "p99_ms": p[3]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="running server (default: start one on build/model_repository)")
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    blobs = [r.image.read_bytes() for r in read_manifest(args.manifest, "test")]

    def run(url: str) -> list[dict]:
        client = TriageClient(url, outputs=("label", "triage", "probabilities"))
        client.triage(blobs[0])  # warm-up
        return [measure(client, blobs, c, args.requests) for c in args.concurrency]

    if args.url:
        rows = run(args.url)
    else:
        from cxr.server import TritonServer, free_port

        with TritonServer(args.repository, free_port(), free_port(), free_port()) as server:
            rows = run(server.grpc_url)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'conc':>4} {'img/s':>7} {'p50':>7} {'p90':>7} {'p95':>7} {'p99':>7} {'errors':>6}")
        for r in rows:
            print(f"{r['concurrency']:>4} {r['img_s']:>7.2f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} "
                  f"{r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6}")
    return rows


if __name__ == "__main__":
    main()
