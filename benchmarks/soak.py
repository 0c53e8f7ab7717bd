"""Soak: hours of hospital traffic compressed into minutes, watching for what only time reveals.

    make soak                      (= python -m benchmarks.soak --duration 600 --concurrency 32)
    python -m benchmarks.soak [--duration S] [--concurrency N] [--profile cpu|cpu-int8] [--json]

Starts Triton on the repository of ``--profile`` and keeps ``--concurrency`` closed-loop clients sending real
test-split images for ``--duration`` seconds. Every ``--window`` seconds it records throughput, errors,
p50/p99 latency and the memory of the server and its python-backend stubs together (sampled every 2 s).

Reported (goals from issue 7, never asserted here):
- ``errors``: failed requests over the whole run (goal 0);
- ``p99_drift``: p99 of the last minute over p99 of the first minute after warm-up (1.0 = no drift);
- ``memory_growth``: server memory (PSS of tritonserver + stubs, see :func:`server_memory`) over the last minute
  over the first minute after warm-up, minus 1 (goal < 5 %); ``growth_by_process_mb`` says who grew.

Writes ``results.json`` (summary + every window) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.images import benchmark_images
from benchmarks.load import OUTPUTS, ClosedLoop
from benchmarks.run import PROFILES, ensure_repository
from client.grpc_client import TriageClient
from ops.ports import free_port
from ops.server import TritonServer
from ops.watchdog import stub_instance

GOALS = {"errors": 0, "memory_growth": 0.05}


def server_memory(pid: int) -> dict[str, float]:
    """Memory of ``tritonserver`` and its python-backend stubs, in MB: ``rss`` (summed resident sets, which
    count the shared-memory regions once per process that maps them), ``pss`` (proportional set size: shared
    pages split between their users, so the sum is the real total) and ``pss`` per process (``by_process``)."""
    import psutil

    rss, pss, by_process = 0, 0, {}
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss": 0.0, "pss": 0.0, "by_process": {}}
    for process in processes:
        try:
            info = process.memory_full_info()
            argv = process.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        stub = stub_instance(argv)
        name = stub[0] if stub is not None else "tritonserver"
        rss, pss = rss + info.rss, pss + info.pss
        by_process[name] = round(info.pss / 2**20, 1)
    return {"rss": rss / 2**20, "pss": pss / 2**20, "by_process": by_process}


class Recorder:
    """Thread-safe per-window latency/error collection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def add(self, latency_ms: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(latency_ms)
            else:
                self.errors.append(error)

    def take(self) -> tuple[list[float], list[str]]:
        with self.lock:
            taken = self.latencies, self.errors
            self.latencies, self.errors = [], []
        return taken


def soak(grpc_url: str, server_pid: int, blobs: list[bytes], duration_s: float, concurrency: int,
         window_s: float = 10.0, warmup_s: float = 30.0, log=print) -> dict:
    """Run the soak against a running server; returns the summary and the per-window rows."""

    client = TriageClient(grpc_url, outputs=OUTPUTS)
    recorder, stop = Recorder(), threading.Event()

    memory_samples: list[dict] = []

    def sample_memory() -> None:  # every 2 s: a window's memory is the mean of its samples, not one instant
        while not stop.is_set():
            memory_samples.append(server_memory(server_pid))
            stop.wait(2.0)

    for blob in blobs[:4]:
        client.triage(blob)  # first calls pay one-off costs (sessions, allocations)
    threading.Thread(target=sample_memory, daemon=True).start()
    load = ClosedLoop(client.triage, blobs, concurrency,
                      lambda sent, answered, out: recorder.add((answered - sent) * 1e3, out.error))
    started = time.monotonic()
    load.start()
    windows, all_errors = [], []
    while time.monotonic() - started < duration_s:
        time.sleep(min(window_s, max(0.0, duration_s - (time.monotonic() - started))))
        latencies, errors = recorder.take()
        all_errors += errors
        elapsed = time.monotonic() - started
        taken, memory_samples[:] = list(memory_samples), []
        memory = _mean_memory(taken) if taken else server_memory(server_pid)
        row = {"t_s": round(elapsed, 1), "answers": len(latencies), "errors": len(errors),
               "img_s": len(latencies) / window_s, "rss_mb": memory["rss"], "pss_mb": memory["pss"],
               "pss_by_process_mb": memory["by_process"]}
        if latencies:
            row.update(p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)))
        windows.append(row)
        log(f"  t={row['t_s']:>6.0f}s  {row['img_s']:5.1f} img/s  errors {row['errors']}  "
            f"p50 {row.get('p50_ms', 0):6.0f} ms  p99 {row.get('p99_ms', 0):6.0f} ms  PSS {row['pss_mb']:7.0f} MB "
            f"(RSS sum {row['rss_mb']:.0f})", flush=True)
    stop.set()
    load.stop()
    client.close()
    return {"summary": summarise(windows, all_errors, duration_s, concurrency, window_s, warmup_s), "windows": windows}


def _mean_memory(samples: list[dict]) -> dict:
    names = set().union(*(s["by_process"] for s in samples))
    return {"rss": float(np.mean([s["rss"] for s in samples])), "pss": float(np.mean([s["pss"] for s in samples])),
            "by_process": {n: round(float(np.mean([s["by_process"].get(n, 0.0) for s in samples])), 1) for n in names}}


def summarise(windows: list[dict], errors: list[str], duration_s: float, concurrency: int, window_s: float,
              warmup_s: float) -> dict:
    """First minute after warm-up vs last minute: p99 drift and memory (PSS) growth."""
    per_minute = max(1, round(60 / window_s))
    steady = [w for w in windows if w["t_s"] > warmup_s and "p99_ms" in w] or windows
    first, last = steady[:per_minute], steady[-per_minute:]
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    answers = sum(w["answers"] for w in windows)
    summary = {
        "duration_s": duration_s, "concurrency": concurrency, "requests": answers + len(errors),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "img_s": answers / duration_s,
        "p99_first_min_ms": mean(first, "p99_ms"), "p99_last_min_ms": mean(last, "p99_ms"),
        "memory_first_min_mb": mean(first, "pss_mb"), "memory_last_min_mb": mean(last, "pss_mb"),
        "rss_sum_first_min_mb": mean(first, "rss_mb"), "rss_sum_last_min_mb": mean(last, "rss_mb"),
    }
    summary["p99_drift"] = summary["p99_last_min_ms"] / summary["p99_first_min_ms"]
    summary["memory_growth"] = summary["memory_last_min_mb"] / summary["memory_first_min_mb"] - 1
    summary["growth_by_process_mb"] = {
        name: round(last[-1]["pss_by_process_mb"].get(name, 0) - first[0]["pss_by_process_mb"][name], 1)
        for name in first[0].get("pss_by_process_mb", {})}
    summary["goals_met"] = {"errors": summary["errors"] == GOALS["errors"],
                            "memory_growth": summary["memory_growth"] < GOALS["memory_growth"]}
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per recorded window")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out", default="build/soak")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    repository = ensure_repository(args.profile)
    blobs = benchmark_images()
    log = (lambda *_, **__: None) if args.json else print
    log(f"soak: {args.profile} profile, {args.concurrency} clients, {args.duration:.0f} s, {len(blobs)} real images")
    with TritonServer(repository, free_port(), free_port(), free_port()) as server:
        result = soak(server.grpc_url, server.process.pid, blobs, args.duration, args.concurrency, args.window, log=log)
        result["summary"]["stub_reloads"] = len(server.watchdog.restarts) if server.watchdog else 0
    result["summary"]["profile"] = args.profile
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
    else:
        print()
        for key, value in result["summary"].items():
            print(f"  {key:<20} {round(value, 3) if isinstance(value, float) else value}")
        print(f"\nwrote {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
