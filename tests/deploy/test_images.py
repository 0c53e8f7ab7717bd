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
