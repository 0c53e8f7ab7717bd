"""Closed-loop load generators shared by every benchmark and the reliability tests: one client loop for every server.

Worker threads each send one image, wait for the answer, and send the next: :func:`run_load` until ``requests``
answers have come back (the benchmarks' levels), :class:`ClosedLoop` until it is stopped (the soak, the fault and
rollout tests). Latency is measured here, around the transport call, so the served ensemble and the naive
baseline are timed by the same code.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from cxr.specs import LABEL, PROBABILITIES, TRIAGE

# send(image_bytes) -> None on success, or an error message.
Send = Callable[[bytes], "str | None"]

PERCENTILES = (50, 90, 95, 99)
OUTPUTS = tuple(t.name for t in (LABEL, TRIAGE, PROBABILITIES))  # what every load asks the ensemble for


def requests_for(concurrency: int, minimum: int = 96, per_worker: int = 4) -> int:
    """Enough requests that every worker sends several and the tail percentiles mean something."""
    return max(minimum, per_worker * concurrency)


def run_load(send: Send, blobs: list[bytes], concurrency: int, requests: int, warmup: int = 2) -> dict:
    """Run ``requests`` requests with ``concurrency`` in flight over ``blobs`` (cycled).

    Returns:
        ``{"concurrency", "requests", "errors", "img_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
        "first_error"}``; ``img_s`` counts successful answers over the wall time.
    """
    for blob in blobs[:warmup]:
        send(blob)
    items = [blobs[i % len(blobs)] for i in range(requests)]

    def timed(blob: bytes) -> tuple[float, str | None]:
        start = time.perf_counter()
        error = send(blob)
        return (time.perf_counter() - start) * 1e3, error

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(timed, items))
    wall = time.perf_counter() - start
    latencies = np.array([ms for ms, _ in results])
    errors = [e for _, e in results if e is not None]
    row = {"concurrency": concurrency, "requests": requests, "errors": len(errors),
           "img_s": (requests - len(errors)) / wall, "wall_s": wall}
    row.update({f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, np.percentile(latencies, PERCENTILES))})
    row["first_error"] = errors[0] if errors else None
    return row


class ClosedLoop:
    """``workers`` threads sending ``blobs`` without pause until :meth:`stop` (or the end of a ``with`` block).

    Worker ``k`` sends blobs ``k, k + workers, ...`` (cycled); ``on_answer(sent, answered, result)`` gets every
    answer, with ``time.monotonic()`` stamps around ``send``; it is called from the workers' threads.
    """

    def __init__(self, send: Callable[[bytes], Any], blobs: list[bytes], workers: int,
                 on_answer: Callable[[float, float, Any], None]) -> None:
        self.send, self.blobs, self.on_answer = send, blobs, on_answer
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(workers)]

    def _run(self, k: int) -> None:
        i = k
        while not self._stop.is_set():
            sent = time.monotonic()
            result = self.send(self.blobs[i % len(self.blobs)])
            self.on_answer(sent, time.monotonic(), result)
            i += len(self.threads)

    def start(self) -> "ClosedLoop":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout_s)

    def __enter__(self) -> "ClosedLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
