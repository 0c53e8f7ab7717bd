"""NVIDIA perf_analyzer against ``cxr_triage``, with real encoded CXRs, compared with our own load generator.

    python -m benchmarks.perf_analyzer [--concurrency 1 4 16 64] [--json]

Load testers who already use perf_analyzer can point it at the service the same way:
    build/tools/perf_analyzer -m cxr_triage -u localhost:8001 -i grpc \\
        --input-data build/bench/perf_analyzer_input.json --concurrency-range 16 \\
        --measurement-mode count_windows --measurement-request-count 64

``setup_tools`` fetches the binary from the ``tritonclient==2.41.0`` wheel (the newer wheels dropped it)
into ``build/tools`` and links the two shared libraries it needs (``libb64.so.0d`` and ``libcudart.so.12``,
both bundled in the nvidia-pytriton wheel; it only loads cudart, no GPU is used).
``write_input_data`` writes the input-data JSON: each test-split image's encoded bytes, base64, as one
``image_bytes`` element. The run starts Triton on the FP32 repository, measures each concurrency with
perf_analyzer and then with :mod:`benchmarks.load`, and reports the throughput ratio (goal: within 15%).
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.images import benchmark_images
from benchmarks.load import OUTPUTS, requests_for, run_load
from client.grpc_client import TriageClient
from cxr.specs import ENSEMBLE_NAME, IMAGE_BYTES
from ops.ports import free_port
from ops.server import TritonServer, pytriton_root

TOOLS = Path("build/tools")
WHEEL = "tritonclient==2.41.0"
AGREEMENT = 0.15


def setup_tools(tools: Path = TOOLS) -> Path:
    """``tools/perf_analyzer`` (extracted once) plus ``tools/lib`` with the libraries it loads."""

    binary = tools / "perf_analyzer"
    libs = tools / "lib"
    if not binary.exists():
        tools.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tools), WHEEL], check=True)
        wheel = next(tools.glob("tritonclient-2.41.0-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data/bin/perf_analyzer"))
            binary.write_bytes(archive.read(member))
        binary.chmod(0o755)
        wheel.unlink()
    bundled = pytriton_root().parent / "nvidia_pytriton.libs"
    libs.mkdir(parents=True, exist_ok=True)
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        link = libs / soname
        if not link.exists():
            link.symlink_to(next(bundled.glob(pattern)).resolve())
    return binary


def write_input_data(blobs: list[bytes], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one entry per image, the encoded file as one BYTES element.

    perf_analyzer sends ``b64`` data as the tensor's raw serialized form; for BYTES that is each element
    prefixed with its length as a little-endian uint32 (without it the server reads the JPEG's first
    four bytes as a length).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{IMAGE_BYTES.name: {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode(), "shape": [1]}}
               for b in blobs]
    path.write_text(json.dumps({"data": entries}))
    return path


def run_perf_analyzer(binary: Path, url: str, input_data: Path, concurrency: int, requests: int) -> dict:
    """One perf_analyzer measurement; its CSV report as ``{"img_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms"}``."""
    report = input_data.parent / f"perf_analyzer_c{concurrency}.csv"
    command = [str(binary), "-m", ENSEMBLE_NAME, "-u", url, "-i", "grpc", "--input-data", str(input_data),
               "-b", "1", "--concurrency-range", str(concurrency), "--measurement-mode", "count_windows",
               "--measurement-request-count", str(requests), "--max-trials", "6", "--stability-percentage", "25",
               "--percentile", "99", "-f", str(report)]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([str(binary.parent / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    row = next(csv.DictReader(io.StringIO(report.read_text())))
    return {"img_s": float(row["Inferences/Second"]),
            **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1e3 for p in (50, 90, 95, 99)}}


def compare(concurrency=(1, 4, 16, 64), repository: str = "build/model_repository", out: Path = Path("build/bench")) -> list[dict]:
    """perf_analyzer and our load generator, each level back to back on the same server."""

    binary = setup_tools()
    blobs = benchmark_images()
    input_data = write_input_data(blobs, out / "perf_analyzer_input.json")
    rows = []
    with TritonServer(repository, free_port(), free_port(), free_port()) as server:
        client = TriageClient(server.grpc_url, outputs=OUTPUTS)
        for c in concurrency:
            theirs = run_perf_analyzer(binary, server.grpc_url, input_data, c, requests_for(c))
            ours = run_load(lambda b: client.triage(b).error, blobs, c, requests_for(c))
            ratio = theirs["img_s"] / ours["img_s"]
            rows.append({"concurrency": c, "perf_analyzer": theirs, "ours": {k: ours[k] for k in theirs},
                         "ratio": ratio, "agree_within_15pct": abs(ratio - 1) <= AGREEMENT})
        client.close()
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = compare(tuple(args.concurrency), args.repository, Path(args.out))
    Path(args.out, "perf_analyzer.json").write_text(json.dumps(rows, indent=2))
    if args.json:
        print(json.dumps(rows))
        return rows
    print(f"{'conc':>4} {'perf_analyzer img/s':>20} {'ours img/s':>10} {'ratio':>6} {'PA p99':>8} {'our p99':>8}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['perf_analyzer']['img_s']:>20.2f} {r['ours']['img_s']:>10.2f} "
              f"{r['ratio']:>6.2f} {r['perf_analyzer']['p99_ms']:>8.1f} {r['ours']['p99_ms']:>8.1f}")
    return rows


if __name__ == "__main__":
    main()
