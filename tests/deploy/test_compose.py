"""The GPU compose file is valid YAML and wired to what export/ writes (it cannot run here: no GPU, no Docker)."""
from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


def test_compose_serves_the_gpu_repository_with_a_gpu_and_health_check():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    triton = services["triton"]
    assert "tritonserver:24.10-py3" in triton["image"]  # Triton 2.51, the CPU wheel's release
    assert any(v.endswith(":/models:ro") for v in triton["volumes"])
    assert "--model-repository=/models" in triton["command"][-1]
    assert {p.split(":")[1] for p in triton["ports"]} == {"8000", "8001", "8002"}
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_engine_service_runs_the_script_build_repository_writes():
    from export.build_repository import ENGINE_SCRIPT

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    engines = services["engines"]
    assert engines["profiles"] == ["trt"]
    assert engines["command"][-1] == f"/models/{ENGINE_SCRIPT}"
    assert services["triton"]["depends_on"]["engines"]["condition"] == "service_completed_successfully"
