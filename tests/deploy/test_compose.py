"""The compose stack is valid YAML and wired together (it cannot run here: no GPU, no Docker engine)."""
from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


def test_compose_serves_the_gpu_repository_with_a_gpu_and_health_check():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    triton = services["triton"]
    assert "cxr-triage-triton" in triton["image"]  # deploy/docker/Dockerfile.triton: NGC Triton 2.51 + the steps' deps
    assert "pip install" not in " ".join(triton["command"])  # nothing is installed when the container starts
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


def test_full_stack_services_and_their_files():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"triton", "gateway", "orthanc", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert set(depends) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # bind mounts of this repository's files must exist
                assert (COMPOSE.parent / source).exists(), (name, source)
            elif not source.startswith("$"):
                assert source in compose["volumes"], (name, source)
    assert (COMPOSE.parent / services["gateway"]["build"]["context"] / services["gateway"]["build"]["dockerfile"]).exists()


def test_prometheus_scrapes_the_ports_the_services_listen_on():
    prometheus = yaml.safe_load((COMPOSE.parents[1] / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prometheus["scrape_configs"]}
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    gateway_cmd = services["gateway"]["command"]
    assert targets["triton"] == "triton:8002" and "8002:8002" in services["triton"]["ports"]
    assert targets["gateway"] == f"gateway:{gateway_cmd[gateway_cmd.index('--metrics-port') + 1]}"
    orthanc_modalities = services["orthanc"]["environment"]["ORTHANC__DICOM_MODALITIES"]
    assert '"CXRGW", "gateway", 11112' in orthanc_modalities and "ORTHANC@orthanc:4242" in gateway_cmd
