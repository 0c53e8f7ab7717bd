"""Server-side time per pipeline step from Triton's statistics API (queue vs compute).

Take a snapshot before and after a load run; :func:`breakdown` turns the difference into average
milliseconds per request for each model, and the mean batch size each model actually executed.
"""
from __future__ import annotations

import tritonclient.grpc as grpcclient

FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


def snapshot(client: grpcclient.InferenceServerClient) -> dict[str, dict]:
    """Cumulative counters per model: request count, executions, and nanoseconds per phase."""
    stats = client.get_inference_statistics(as_json=True)
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        row = {"requests": int(inference.get("success", {}).get("count", 0)),
               "executions": int(model.get("execution_count", 0)),
               "inferences": int(model.get("inference_count", 0))}
        row.update({f: int(inference.get(f, {}).get("ns", 0)) for f in FIELDS})
        row["success"] = int(inference.get("success", {}).get("ns", 0))  # wall time of the requests, end to end
        out[model["name"]] = row
    return out


def breakdown(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model: ``requests``, ``mean_batch``, and ``queue_ms``/``compute_ms`` per request over the interval."""
    out = {}
    for name, end in after.items():
        start = before.get(name, {k: 0 for k in end})
        requests = end["requests"] - start["requests"]
        if requests <= 0:
            continue
        executions = end["executions"] - start["executions"]
        per_request = {f: (end[f] - start[f]) / requests / 1e6 for f in FIELDS}
        out[name] = {
            "requests": requests,
            "mean_batch": (end["inferences"] - start["inferences"]) / executions if executions else None,
            "queue_ms": per_request["queue"],
            "compute_ms": per_request["compute_input"] + per_request["compute_infer"] + per_request["compute_output"],
            "compute_infer_ms": per_request["compute_infer"],
            # the request's own wall time in the server: for an ensemble, less than the sum of its steps
            # when they overlap (queue + compute of an ensemble add up its steps' times)
            "request_ms": (end.get("success", 0) - start.get("success", 0)) / requests / 1e6,
        }
    return out
