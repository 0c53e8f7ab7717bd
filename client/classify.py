"""``cxr classify``: triage files over gRPC and print a table or JSON lines."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from client.files import expand
from client.grpc_client import TriageClient, TriageOutput
from cxr.labels import LABELS


def format_table(results: list[TriageOutput]) -> str:
    """A fixed-width table: one row per image, rejected images with their error."""
    header = ["file", "priority", "finding", *LABELS, "lung", "ms"]
    rows, errors = [], {}
    for r in results:
        name = Path(r.name).name
        if r.error is not None:
            errors[len(rows)] = f"{name}  ERROR  {r.error}"
            rows.append(None)
            continue
        rows.append([name, r.triage.get("priority", "?"), r.label or "?",
                     *("untrained" if r.probabilities.get(k) is None else f"{r.probabilities[k]:.2f}" for k in LABELS), f"{r.lung_fraction:.2f}", f"{r.latency_ms:.0f}"])
    table = [header, *(row for row in rows if row is not None)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    for i, row in enumerate(rows):
        lines.append(errors[i] if row is None else "  ".join(f"{c:<{w}}" for c, w in zip(row, widths)))
    return "\n".join(lines)


def run(paths: list[str], url: str, as_json: bool, concurrency: int = 8, out: TextIO = sys.stdout) -> int:
    """Triage ``paths``; returns 0 if every image got a result, 1 if some were rejected, 2 if the server is down."""
    files = expand(paths)
    client = TriageClient(url)
    if not client.is_ready():
        print(f"error: Triton at {url} is not ready (start it with `cxr serve`)", file=sys.stderr)
        return 2
    results = list(client.triage_many(((str(f), f.read_bytes()) for f in files), concurrency=concurrency))
    if as_json:
        for r in results:
            out.write(json.dumps(r.to_json()) + "\n")
    else:
        out.write(format_table(results) + "\n")
    return 1 if any(r.error for r in results) else 0
