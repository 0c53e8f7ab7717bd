"""Where the latency tail at concurrency 1 comes from: every request split into its pipeline steps.

    python -m benchmarks.tail [--repeats 4] [--arena shrink|keep] [--json] [--out build/bench/tail.json]

``cxr bench`` reports p99/p50 of the served ensemble at concurrency 1 over the test images. Here each test image
is sent ``repeats`` times, in a shuffled order, one request at a time; around every request a snapshot of
Triton's statistics gives that request's time in each step (queue + compute per model; the statistics calls
lie outside the timed window) and the ensemble's wall time in the server (steps overlap: the classifier does not
wait for the segmenter, so their times add up to more than the request's). Reported, as numbers (nothing asserted):

- ``pooled``: p50, p99 and p99/p50 of the end-to-end latency, as ``cxr bench`` measures them;
- ``between_images``: p99/p50 of the images' own median latencies: what the images themselves make of it
  (the cascade sends some to stage 2 by design; image sizes differ);
- ``within_image``: p99 of latency / its image's median: jitter, what the same image sees from run to run;
- ``branches``: median latency of the requests that ran stage 2 and of those that did not;
- ``excess``: over the slowest tenth of the requests, the mean excess of each step over that step's own median
  (``client+transport``: the end-to-end latency not spent inside the ensemble), largest first.

``--arena shrink`` starts the server with ``CXR_ORT_ARENA=shrink`` (:mod:`cxr.onnx_session`): the A/B for the
arena's shrink after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.images import benchmark_images
from benchmarks.load import OUTPUTS
from benchmarks.triton_stats import breakdown, snapshot
from client.grpc_client import TriageClient
from cxr.cpu import cpu_line, describe_cpu
from ops.ports import free_port
from ops.server import TritonServer

ENSEMBLE = "cxr_triage"
OUTSIDE = "client+transport"


def measure(repository: str, blobs: list[bytes], repeats: int, seed: int = 0) -> list[dict]:
    """One row per request: ``image``, ``ms``, ``stage2`` (ran or not), ``steps`` (ms per model), in send order."""
    order = [i for i in range(len(blobs)) for _ in range(repeats)]
    random.Random(seed).shuffle(order)
    rows = []
    with TritonServer(repository, free_port(), free_port(), free_port()) as server:
        client = TriageClient(server.grpc_url, outputs=OUTPUTS, admin_key=server.admin_key)
        for blob in blobs[:2]:  # warm-up, as every load level
            client.triage(blob)
        before = _recorded(client, 2)
        for i in order:
            start = time.monotonic()
            answer = client.triage(blobs[i])
            ms = (time.monotonic() - start) * 1e3
            if answer.error is not None:
                raise RuntimeError(f"image {i}: {answer.error}")
            after = _recorded(client, before[ENSEMBLE]["requests"] + 1)
            server, before = breakdown(before, after), after
            steps = {name: s["queue_ms"] + s["compute_ms"] for name, s in server.items() if name != ENSEMBLE}
            steps[ENSEMBLE] = server[ENSEMBLE]["request_ms"]  # wall time: steps run side by side
            steps[OUTSIDE] = ms - steps[ENSEMBLE]
            rows.append({"image": i, "ms": ms, "stage2": bool(answer.triage.get("cascade")), "steps": steps})
        client.close()
    return rows


def _recorded(client: TriageClient, requests: int, timeout_s: float = 2.0) -> dict:
    """A statistics snapshot once the ensemble has recorded ``requests`` in all: Triton records an ensemble's
    request after its answer has gone out, so a snapshot taken at once can miss the last one."""
    deadline = time.monotonic() + timeout_s
    while (stats := snapshot(client.client)).get(ENSEMBLE, {}).get("requests", 0) < requests:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Triton's statistics did not record request {requests} within {timeout_s} s")
        time.sleep(0.001)
    return stats


def summarise(rows: list[dict]) -> dict:
    ms = np.array([r["ms"] for r in rows])
    images = np.array([r["image"] for r in rows])
    medians = {i: float(np.median(ms[images == i])) for i in set(images.tolist())}
    own = np.array([medians[i] for i in images])
    image_medians = np.array(list(medians.values()))

    def ratio(values: np.ndarray) -> float:
        return float(np.percentile(values, 99) / np.percentile(values, 50))

    step_names = sorted({name for r in rows for name in r["steps"]} - {ENSEMBLE})
    step_ms = {name: np.array([r["steps"].get(name, 0.0) for r in rows]) for name in step_names}
    slow = np.argsort(ms, kind="stable")[-max(1, len(ms) // 10):]  # the slowest tenth
    excess = {name: float((v[slow] - np.median(v)).mean()) for name, v in step_ms.items()}
    stage2 = np.array([r["stage2"] for r in rows])
    return {
        "requests": len(rows), "images": len(medians),
        "pooled": {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "p99_over_p50": ratio(ms)},
        "between_images": {"p99_over_p50": ratio(image_medians)},
        "within_image": {"p99_over_median": float(np.percentile(ms / own, 99))},
        "branches": {"stage2_share": float(stage2.mean()),
                     "stage2_p50_ms": float(np.median(ms[stage2])) if stage2.any() else None,
                     "no_stage2_p50_ms": float(np.median(ms[~stage2])) if (~stage2).any() else None},
        "step_p50_ms": {name: float(np.median(v)) for name, v in step_ms.items()},
        "excess_slowest_tenth_ms": dict(sorted(excess.items(), key=lambda kv: -kv[1])),
    }


def print_report(result: dict) -> None:
    s = result["summary"]
    print(cpu_line(result["cpu"]))
    print(f"{s['requests']} requests ({s['images']} images x {result['repeats']}), concurrency 1, arena {result['arena']}")
    print(f"pooled: p50 {s['pooled']['p50_ms']:.1f} ms, p99 {s['pooled']['p99_ms']:.1f} ms, "
          f"p99/p50 {s['pooled']['p99_over_p50']:.2f}")
    print(f"between images (their medians): p99/p50 {s['between_images']['p99_over_p50']:.2f}")
    print(f"within an image (latency / its median): p99 {s['within_image']['p99_over_median']:.2f}")
    b = s["branches"]
    print(f"stage 2 on {b['stage2_share']:.0%} of requests: p50 {b['stage2_p50_ms'] or float('nan'):.1f} ms "
          f"with, {b['no_stage2_p50_ms'] or float('nan'):.1f} ms without")
    print("slowest tenth of the requests: mean excess of each step over its median (ms)")
    for name, value in s["excess_slowest_tenth_ms"].items():
        print(f"  {name:<20} {value:7.1f}   (median {s['step_p50_ms'][name]:.1f})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--arena", choices=("shrink", "keep"), default=os.environ.get("CXR_ORT_ARENA", "keep"))
    parser.add_argument("--out", default="build/bench/tail.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ["CXR_ORT_ARENA"] = args.arena  # the server's python models read it when they load
    rows = measure(args.repository, benchmark_images(), args.repeats)
    result = {"cpu": describe_cpu(), "repository": args.repository, "repeats": args.repeats, "arena": args.arena,
              "summary": summarise(rows), "requests": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"])) if args.json else print_report(result)
    return result


if __name__ == "__main__":
    main()
