"""Every metric the Grafana dashboard queries exists: Triton's and the python models' custom metrics on a running
server (after real traffic), the gateway's in its registry. A renamed metric fails here, not on a dark panel."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "cxr-triage.json"
METRIC = re.compile(r"\b((?:nv|cxr)_[a-z0-9_]+)\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _queried() -> dict[str, set[str]]:
    """Panel title -> the metric names its queries use."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    unquoted = lambda expr: re.sub(r'"[^"]*"', '""', expr)  # noqa: E731  (label values such as model="cxr_triage")
    return {p["title"]: {m for t in p["targets"] for m in METRIC.findall(unquoted(t["expr"]))} for p in panels}


def _base(name: str) -> str:
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)


def _exposed(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition, with and without their sample suffixes."""
    names = set()
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# TYPE") else re.split(r"[{ ]", line, 1)[0]
        if name and not name.startswith("#"):
            names.add(name)
            names.update(name[: -len(s)] for s in SUFFIXES if name.endswith(s))
    return names


def test_dashboard_json_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "cxr-triage" and len(dashboard["panels"]) >= 10
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dashboard["panels"])


@pytest.mark.triton
def test_every_panel_metric_exists_on_a_running_server(triton, test_rows, corpus):
    from gateway.service import GatewayMetrics
    from client.grpc_client import TriageClient
    from prometheus_client import generate_latest

    client = TriageClient(triton.grpc_url)
    for out in client.triage_many([(r.image.name, r.image.read_bytes()) for r in test_rows[:12]], concurrency=4):
        assert out.error is None
    assert client.triage(corpus["jpeg-truncated"]).error  # a refusal, for the rejected-images panel
    client.close()
    with urllib.request.urlopen(f"http://localhost:{triton.metrics_port}/metrics", timeout=10) as response:
        exposed = _exposed(response.read().decode())
    exposed |= _exposed(generate_latest(GatewayMetrics().registry).decode())

    # a histogram with no observations yet exposes only its base name (TYPE line): compare base names too
    missing = {title: sorted(n for n in names if n not in exposed and _base(n) not in exposed)
               for title, names in _queried().items()}
    missing = {title: names for title, names in missing.items() if names}
    assert not missing, f"dashboard panels query metrics nobody exposes: {missing}"
