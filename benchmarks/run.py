"""One command, one run: the served ensemble against its own limit and against a naive server.

    cxr bench [--json] [--out build/bench]      (same as: python -m benchmarks.run)

For each repository profile (``cpu`` = FP32, ``cpu-int8`` = the INT8 graphs; built if missing):
1. ``raw``: the pipeline's code and ONNX files back-to-back in this process (:mod:`benchmarks.raw`).
2. ``served``: the ``cxr_triage`` ensemble in Triton over gRPC at concurrency 1, 4, 16, 64, with
   Triton's per-step queue/compute statistics for each level.

Then two baselines: Flask + PyTorch eager FP32, one request at a time (:mod:`benchmarks.baseline_server`),
driven by the same load generator with the same images: ``baseline`` runs the served models (the ratio is
the serving stack alone, ``vs_baseline``); ``baseline_today`` runs the segmenter and stage 2 served before
(ResUNet-18, 3.48 GMAC; SE-DenseNet169; the same classifier): what a site would otherwise run (``vs_today_baseline``, issue 19's
goal: >= 3x FP32, >= 5x INT8). The top-level summary is the FP32 profile; ``profiles`` has every profile's own.

Every server is started here, measured alone (the others stopped) and stopped again. Prints a table
(or JSON with ``--json``) and writes ``results.json`` and ``latency_throughput.png`` under ``--out``.
Goals (see the README's Performance section) are reported as numbers, never asserted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from benchmarks import raw as raw_bench
from benchmarks.images import benchmark_images
from benchmarks.load import OUTPUTS, requests_for, run_load
from benchmarks.triton_stats import breakdown, snapshot
from client.grpc_client import TriageClient
from cxr.admin_key import key_from_env
from cxr.cpu import cpu_line, describe_cpu
from export.build_repository import build_repository
from ops.ports import free_port
from ops.server import TritonServer

CONCURRENCY = (1, 4, 16, 64)
PROFILES = {"cpu": "build/model_repository", "cpu-int8": "build/model_repository_int8"}
BASELINE_CONCURRENCY = (1, 16)
GOALS = {"efficiency": 0.90, "vs_baseline": 3.0, "p99_over_p50_c1": 1.3}
VS_TODAY_GOAL = {"cpu": 3.0, "cpu-int8": 5.0}  # served img/s over the Flask baseline of today's models


def ensure_repository(profile: str) -> str:
    """The repository of ``profile``, built from the shipped weights if it is not there yet."""

    repository = PROFILES[profile]
    build_repository(repository, profile)  # cheap when up to date: exports are cached by weights hash
    return repository


def _quiet(line: str) -> None:
    pass


def _level_line(name: str, row: dict) -> str:
    return f"{name} concurrency {row['concurrency']}: {row['img_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms"


def measure_served(repository: str, blobs: list[bytes], concurrency=CONCURRENCY, url: str | None = None,
                   shared_memory: str | None = None, say: Callable[[str], None] = _quiet) -> list[dict]:
    """Load levels against ``cxr_triage`` (a server is started on ``repository`` unless ``url`` is given).

    ``shared_memory="system"``: the client passes images through POSIX shared memory (co-located client).
    ``say`` gets one line per finished load level (progress).
    """

    def levels(grpc_url: str, admin_key: str | None) -> list[dict]:
        client = TriageClient(grpc_url, outputs=OUTPUTS, shared_memory=shared_memory,
                              admin_key=admin_key)
        send = lambda blob: client.triage(blob).error  # noqa: E731
        rows = []
        for c in concurrency:
            before = snapshot(client.client)
            row = run_load(send, blobs, c, requests_for(c))
            row["server"] = breakdown(before, snapshot(client.client))
            rows.append(row)
            say(_level_line("  served", row))
        client.close()
        return rows

    if url:
        return levels(url, key_from_env())  # a server started elsewhere: its key, if given

    with TritonServer(repository, free_port(), free_port(), free_port()) as server:
        return levels(server.grpc_url, server.admin_key)


def measure_baseline(blobs: list[bytes], models: str = "served", concurrency=BASELINE_CONCURRENCY,
                     startup_s: float = 120.0, say: Callable[[str], None] = _quiet) -> list[dict]:
    """Start the Flask baseline (``models``: ``served`` or ``today``) in a subprocess and drive it with the
    same load generator."""

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.baseline_server", "--port", str(port),
                                "--models", models],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def send(blob: bytes) -> str | None:
        req = urllib.request.Request(f"{base}/triage", data=blob, headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=600) as response:
                json.loads(response.read())
                return None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(exc)

    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Flask baseline did not start")
                time.sleep(0.5)
        rows = []
        for c in concurrency:
            rows.append(run_load(send, blobs, c, requests_for(c)))
            say(_level_line(f"  baseline ({models} models)", rows[-1]))
        return rows
    finally:
        process.terminate()
        process.wait(30)


def summarise(raw: dict, served: list[dict], baseline: list[dict], today: list[dict], vs_today_goal: float) -> dict:
    """The headline numbers and the goals, met or not (``vs_today_goal``: the profile's goal over ``today``)."""
    best_served = max(served, key=lambda r: r["img_s"])
    best_base = max(baseline, key=lambda r: r["img_s"])
    best_today = max(today, key=lambda r: r["img_s"])
    at = {r["concurrency"]: r for r in served}
    base_at = {r["concurrency"]: r for r in baseline}
    c1 = at.get(1)
    summary = {
        "raw_ort_img_s": raw["raw_img_s"],
        "served_img_s": best_served["img_s"],
        "served_concurrency": best_served["concurrency"],
        "efficiency": best_served["img_s"] / raw["raw_img_s"],
        "baseline_img_s": best_base["img_s"],
        "vs_baseline": best_served["img_s"] / best_base["img_s"],
        "today_baseline_img_s": best_today["img_s"],
        "vs_today_baseline": best_served["img_s"] / best_today["img_s"],
        "batching_gain": at[16]["img_s"] / at[1]["img_s"] if 1 in at and 16 in at else None,
        "p99_over_p50_c1": c1["p99_ms"] / c1["p50_ms"] if c1 else None,
        "errors": sum(r["errors"] for r in served + baseline + today),
        "p99_ms_c1": {"served": c1["p99_ms"] if c1 else None,
                      "baseline_today": {r["concurrency"]: r for r in today}.get(1, {}).get("p99_ms")},
    }
    same_c = best_base["concurrency"]
    if same_c in at:
        summary["p99_ms_at_baseline_concurrency"] = {"concurrency": same_c, "served": at[same_c]["p99_ms"],
                                                     "baseline": base_at[same_c]["p99_ms"]}
    summary["goals"] = {
        "efficiency >= 0.90": summary["efficiency"] >= GOALS["efficiency"],
        "vs_baseline >= 3": summary["vs_baseline"] >= GOALS["vs_baseline"],
        f"vs_today_baseline >= {vs_today_goal:g}": summary["vs_today_baseline"] >= vs_today_goal,
        "p99 <= 1.3 x p50 at concurrency 1": bool(c1) and summary["p99_over_p50_c1"] <= GOALS["p99_over_p50_c1"],
    }
    return summary


def plot(profiles: dict[str, dict], baseline: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = [(m["served"], f"Triton ensemble {profile}", "o") for profile, m in profiles.items()]
    for rows, name, marker in curves + [(baseline, "Flask + PyTorch eager", "s")]:
        xs = [r["img_s"] for r in rows]
        ax.plot(xs, [r["p50_ms"] for r in rows], marker=marker, label=f"{name} p50")
        ax.plot(xs, [r["p99_ms"] for r in rows], marker=marker, linestyle="--", label=f"{name} p99")
        for r in rows:
            ax.annotate(f"c={r['concurrency']}", (r["img_s"], r["p99_ms"]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
    for (profile, m), style in zip(profiles.items(), (":", "-.")):
        raw = m["raw"]["raw_img_s"]
        ax.axvline(raw, color="grey", linestyle=style, label=f"raw ONNX Runtime limit {profile} {raw:.1f} img/s")
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("cxr_triage on 2 CPU cores: latency vs throughput")
    ax.legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_report(result: dict) -> None:
    cpu = result["cpu"]
    print(cpu_line(cpu) + "\n")
    for profile, measured in result["profiles"].items():
        print(f"== raw pipeline, profile {profile}")
        raw_bench.print_table(measured["raw"])
        print()
    print(f"{'server':<18} {'conc':>4} {'img/s':>7} {'p50':>7} {'p90':>7} {'p95':>7} {'p99':>7} {'errors':>6}")
    tables = [(f"served {p}", m["served"]) for p, m in result["profiles"].items()]
    tables += [("baseline", result["baseline"]), ("baseline today", result["baseline_today"])]
    for name, rows in tables:
        for r in rows:
            print(f"{name:<18} {r['concurrency']:>4} {r['img_s']:>7.2f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} "
                  f"{r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6}")
    for profile, measured in result["profiles"].items():
        print(f"\nserver-side per step, {profile}, concurrency {measured['served'][-1]['concurrency']} (ms per request):")
        for model, s in measured["served"][-1]["server"].items():
            print(f"  {model:<18} queue {s['queue_ms']:7.1f}  compute {s['compute_ms']:7.1f}  mean batch "
                  f"{s['mean_batch'] or 0:.1f}")
    for profile, measured in result["profiles"].items():
        print(f"\nsummary {profile}:")
        for key, value in measured["summary"].items():
            print(f"  {key:<32} {value}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cxr bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), nargs="+", default=list(PROFILES))
    parser.add_argument("--shared-memory", choices=("none", "system"), default="none",
                        help="send images to the served ensemble through system shared memory")
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    shared_memory = None if args.shared_memory == "none" else args.shared_memory
    blobs = benchmark_images()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Progress lines on a terminal's stderr (a full run takes 4-16 minutes), with --json too: its JSON goes to stdout.
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if sys.stderr.isatty() else _quiet
    profiles = {}
    for profile in args.profile:
        say(f"profile {profile}: building the repository (cached when up to date) ...")
        repository = ensure_repository(profile)
        say(f"profile {profile}: raw pipeline in-process ...")
        raw = raw_bench.measure(repository, blobs)
        say(f"profile {profile}: served ensemble, concurrency {', '.join(map(str, CONCURRENCY))} ...")
        profiles[profile] = {"repository": repository, "raw": raw,
                             "served": measure_served(repository, blobs, shared_memory=shared_memory, say=say)}
    say(f"Flask baselines (served models; today's models), concurrency {', '.join(map(str, BASELINE_CONCURRENCY))} ...")
    baseline = measure_baseline(blobs, say=say)
    today = measure_baseline(blobs, "today", say=say)
    for profile, measured in profiles.items():
        measured["summary"] = summarise(measured["raw"], measured["served"], baseline, today, VS_TODAY_GOAL[profile])
    headline = profiles.get("cpu", next(iter(profiles.values())))
    result = {"cpu": describe_cpu(), "images": len(blobs), "shared_memory": args.shared_memory, **headline["summary"],
              "profiles": profiles, "baseline": baseline, "baseline_today": today}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot(profiles, baseline, out / "latency_throughput.png")
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
        print(f"\nwrote {out / 'results.json'} and {out / 'latency_throughput.png'}")
    return result


if __name__ == "__main__":
    main()
