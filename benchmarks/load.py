"""Closed-loop load generators shared by every benchmark and the reliability tests: one client loop for every server.

Worker threads (:class:`ClosedLoop`) each send one image, wait for the answer, and send the next: until ``requests``
have been sent (:func:`run_load`, the benchmarks' levels) or until stopped (the soak, the fault, rollout and
replica tests). Latency is measured here, around the transport call, so the served ensemble and the naive
baseline are timed by the same code.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

import numpy as np

from cxr.specs import LABEL, PROBABILITIES, TRIAGE

# send(image_bytes) -> None on success, or an error message.
Send = Callable[[bytes], "str | None"]

PERCENTILES = (50, 90, 95, 99)
OUTPUTS = tuple(t.name for t in (LABEL, TRIAGE, PROBABILITIES))  # what every load asks the ensemble for


def requests_for(concurrency: int, minimum: int = 400, per_worker: int = 4) -> int:
    """Enough requests that every worker sends several and the tail percentiles mean something: with 400, p99
    rests on the slowest 4 answers (with the 96 used until 2026-12-05 it was the second-slowest answer alone,
    and p99/p50 at concurrency 1 moved by 0.1-0.2 between runs of the same build)."""
    return max(minimum, per_worker * concurrency)


def run_load(send: Send, blobs: list[bytes], concurrency: int, requests: int, warmup: int = 2) -> dict:
    """Run ``requests`` requests with ``concurrency`` in flight over ``blobs`` (cycled).

    Returns:
        ``{"concurrency", "requests", "errors", "img_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
        "first_error"}``; ``img_s`` counts successful answers over the wall time.
    """
    for blob in blobs[:warmup]:
        send(blob)
    results: list[tuple[float, str | None]] = []  # (latency ms, error), in the order answered
    loop = ClosedLoop(send, blobs, concurrency, lambda sent, answered, error: results.append(((answered - sent) * 1e3, error)),
                      requests=requests)
    start = time.monotonic()
    loop.start().join()
    wall = time.monotonic() - start
    latencies = np.array([ms for ms, _ in results])
    errors = [e for _, e in results if e is not None]
    row = {"concurrency": concurrency, "requests": requests, "errors": len(errors),
           "img_s": (requests - len(errors)) / wall, "wall_s": wall}
    row.update({f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, np.percentile(latencies, PERCENTILES))})
    row["first_error"] = errors[0] if errors else None
    return row


class ClosedLoop:
    """``workers`` threads, each sending the next of ``blobs`` (cycled) as soon as its last answer is back.

    It runs until ``requests`` have been sent (then :meth:`join` returns) or, without ``requests``, until
    :meth:`stop` (or the end of a ``with`` block). ``on_answer(sent, answered, result)`` gets every answer, with
    ``time.monotonic()`` stamps around ``send``; it is called from the workers' threads.
    """

    def __init__(self, send: Callable[[bytes], Any], blobs: list[bytes], workers: int,
                 on_answer: Callable[[float, float, Any], None], requests: int | None = None) -> None:
        self.send, self.blobs, self.on_answer, self.requests = send, blobs, on_answer, requests
        self._next = itertools.count()  # the index of the next request (next() is atomic under the GIL)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        while not self._stop.is_set():
            i = next(self._next)
            if self.requests is not None and i >= self.requests:
                return
            sent = time.monotonic()
            result = self.send(self.blobs[i % len(self.blobs)])
            self.on_answer(sent, time.monotonic(), result)

    def start(self) -> "ClosedLoop":
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout_s)

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        self.join(timeout_s)

    def __enter__(self) -> "ClosedLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
