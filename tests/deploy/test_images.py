"""The gateway image (deploy/docker/Dockerfile) holds what its commands import, and none of them needs torch.

No container engine runs on the development machine, so the image is not built here: this reads its COPY lines
and imports each command's modules with torch, onnxruntime and the training stack made unimportable."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.client.test_light_client import _BLOCK

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cxr", "client", "export", "training", "ops", "gateway", "cli", "benchmarks")
# what each command of the image runs (module, argv) with --help, and one real call that needs no server
COMMANDS = {
    "gateway": ("cli.main", ["gateway", "--help"]),
    "backfill": ("cli.main", ["backfill", "--help"]),
    "classify": ("cli.main", ["classify", "--help"]),
    "models": ("cli.main", ["models", "--repository", "build/model_repository", "status"]),
}


def _copied() -> set[str]:
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    return {m.group(1).rstrip("/") for m in re.finditer(r"^COPY\s+(\S+)\s+\S+\s*$", text, re.M)}


def _imported_packages(module: str, argv: list[str]) -> set[str]:
    code = _BLOCK + f"""
import importlib, json, sys
main = importlib.import_module({module!r}).main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({PACKAGES!r}))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_gateway_image_copies_every_package_its_commands_import():
    copied = _copied()
    for name, (module, argv) in COMMANDS.items():
        needed = _imported_packages(module, argv)
        assert needed <= copied, f"cxr {name} imports {sorted(needed - copied)}, which the Dockerfile does not COPY"
    assert "export" in copied and "training" not in copied  # cxr models yes; the training stack (torch) no


def test_the_serving_image_bakes_the_python_steps_dependencies_in():
    """NGC Triton 2.51 plus requirements/serving-ngc-py310.txt at build time; nothing installs on start."""
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile.triton").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.M)  # Triton 2.51, the wheel's
    assert "COPY requirements/serving-ngc-py310.txt" in dockerfile and re.search(r"^RUN pip install .*-r ", dockerfile, re.M)
    for path in ("deploy/ngc/run_gpu.sh", "deploy/k8s/triton.yaml", "deploy/compose/docker-compose.yml"):
        text = (REPO / path).read_text()
        assert "cxr-triage-triton" in text and "pip install" not in text, path


def test_the_serving_image_runs_glibc_malloc_as_the_tested_server_does():
    """The soak's flat memory was measured with ops/server.py's malloc settings; the image must carry them."""
    from ops.server import MALLOC_ENV

    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile.triton").read_text()
    env = dict(pair.split("=", 1) for line in re.findall(r"^ENV\s+(.+)$", dockerfile, re.M) for pair in line.split())
    assert {k: env.get(k) for k in MALLOC_ENV} == MALLOC_ENV


def _pins(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_serving_pins_cover_the_runtime_dependencies_and_follow_the_lock():
    import tomllib

    from packaging.requirements import Requirement

    serving = _pins(REPO / "requirements" / "serving-ngc-py310.txt")
    lock = {k.lower(): v for k, v in _pins(REPO / "requirements" / "lock.txt").items()}
    runtime = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    for req in runtime:
        assert req.name in serving, f"{req.name} (a runtime dependency) is not pinned for the serving image"
        assert req.specifier.contains(serving[req.name]), (req, serving[req.name])
    # the lock's versions, except the two that have no Python 3.10 wheel (named in the file's header)
    differ = {name for name, version in serving.items() if lock.get(name) != version}
    assert differ == {"pillow", "scipy"}, differ
    assert set(serving) == {r.name for r in runtime}  # nothing the steps do not import


# import name -> distribution, for the third-party modules the runtime imports
DISTRIBUTIONS = {"numpy": "numpy", "cv2": "opencv-python-headless", "PIL": "pillow", "scipy": "scipy",
                 "pydicom": "pydicom"}


def test_the_python_steps_import_nothing_the_serving_image_lacks():
    """Walk the imports of the GPU profile's python steps through the `cxr` modules they reach."""
    import ast

    serving = _pins(REPO / "requirements" / "serving-ngc-py310.txt")
    provided = set(sys.stdlib_module_names) | {"triton_python_backend_utils"}  # the backend provides the utils
    seen, todo, third_party = set(), [REPO / "model_repository" / m / "1" / "model.py"
                                      for m in ("cxr_preprocess", "triage_router")], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                if name.split(".")[0] == "cxr":
                    module = REPO / Path(*name.split("."))
                    todo.append(module / "__init__.py" if module.is_dir() else module.with_suffix(".py"))
                elif name.split(".")[0] not in provided:
                    third_party.add(name.split(".")[0])
    assert third_party <= set(DISTRIBUTIONS), third_party - set(DISTRIBUTIONS)
    assert {DISTRIBUTIONS[m] for m in third_party} <= set(serving)
