"""``cxr classify``: triage files over gRPC, printing each result as it completes (a table row or a JSON line).

Files are read as requests go out, at most a small window ahead of the answers (``TriageClient.triage_many``),
so a folder of thousands of DICOMs streams in bounded memory and the first result prints before the last file
is read. A progress bar goes to a terminal's stderr (never with ``--json`` or when stderr is not a terminal);
a summary line (counts per priority, rejected files, img/s) ends the run.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from client.files import expand
from client.grpc_client import TriageClient, TriageOutput
from cxr.labels import LABELS

_COLUMNS = ("file", "priority", "finding", *LABELS, "lung", "ms")
_WIDTHS = {"priority": len("expedited"), "finding": max(map(len, LABELS)), "lung": 4, "ms": 5,
           **{label: len("untrained") for label in LABELS}}


def _cells(r: TriageOutput) -> list[str]:
    probabilities = ("untrained" if r.probabilities.get(k) is None else f"{r.probabilities[k]:.2f}" for k in LABELS)
    return [Path(r.name).name, r.triage.get("priority", "?"), r.label or "?", *probabilities,
            f"{r.lung_fraction:.2f}", f"{r.latency_ms:.0f}"]


class Table:
    """Fixed-width rows, printable one at a time (the file column sized from the names known up front)."""

    def __init__(self, names: list[str]) -> None:
        self.widths = [max([len("file"), *(len(Path(n).name) for n in names)]),
                       *(max(len(c), _WIDTHS[c]) for c in _COLUMNS[1:])]

    def header(self) -> str:
        return "\n".join([self._line(_COLUMNS), self._line("-" * w for w in self.widths)])

    def row(self, r: TriageOutput) -> str:
        if r.error is not None:
            return f"{Path(r.name).name}  ERROR  {r.error}"
        return self._line(_cells(r))

    def _line(self, cells) -> str:
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, self.widths)).rstrip()


def format_table(results: list[TriageOutput]) -> str:
    """The whole table for a list of results (header, then one row per image, rejected images with their error)."""
    table = Table([r.name for r in results])
    return "\n".join([table.header(), *(table.row(r) for r in results)])


def summary(results: Counter, seconds: float) -> str:
    """``12 files in 3.1 s (3.9 img/s): 10 triaged (routine 4, expedited 5, urgent 1), 2 rejected``."""
    total = sum(results.values())
    rejected = results.pop("error", 0)
    by_priority = ", ".join(f"{p} {n}" for p, n in sorted(results.items()))
    return (f"{total} files in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} img/s): "
            f"{total - rejected} triaged{f' ({by_priority})' if by_priority else ''}, {rejected} rejected")


def run(paths: list[str], url: str, as_json: bool, concurrency: int = 8, out: TextIO = sys.stdout,
        client: TriageClient | None = None, progress: bool | None = None) -> int:
    """Triage ``paths``; returns 0 if every image got a result, 1 if some were rejected, 2 if the server is down."""
    files = expand(paths)
    client = client or TriageClient(url)
    if not client.is_ready():
        print(f"error: Triton at {url} is not ready (start it with `cxr serve`)", file=sys.stderr)
        return 2
    progress = (not as_json and sys.stderr.isatty()) if progress is None else progress
    table = Table([str(f) for f in files])
    if not as_json:
        out.write(table.header() + "\n")
    counts, started = Counter(), time.perf_counter()
    results = client.triage_many(((str(f), f) for f in files), concurrency=concurrency, ordered=False)
    for r in tqdm(results, total=len(files), desc="triage", unit="img", leave=False, disable=not progress):
        counts["error" if r.error else r.triage.get("priority", "?")] += 1
        out.write((json.dumps(r.to_json()) if as_json else table.row(r)) + "\n")
        out.flush()
    line = summary(counts.copy(), time.perf_counter() - started)
    print(line, file=sys.stderr if as_json else out, flush=True)
    return 1 if counts["error"] else 0

