"""Releases of a model repository: the repository state, release records, configs pinned to the serving release.

A **release** pins one version of every model and one thresholds file. It lives in its own version of
``triage_router``: ``triage_router/<R>/release.json`` (the pins, the model-version strings the results report,
the thresholds version) beside that release's ``thresholds.json``. So a new classifier is a release, and so is
a new thresholds file (site thresholds are separate from weights and released on their own).

``releases.json`` at the repository root records every release, its gates and status, which one serves and
the history of promotions. Every model's ``config.pbtxt`` pins the serving release (``version_policy``
specific, ensemble steps with explicit ``model_version``), so a restart serves the same release.

- :func:`export.publish.publish` makes a model version N+1 a release if its gates pass;
  :func:`publish_thresholds` makes a new thresholds file a release of its own.
- :class:`ops.rollout.Rollout` (Triton in explicit model-control mode, admin key): ``promote`` loads each changed model
  with both versions (config override with ``version_policy``), then switches the ensemble to the new pins in
  one load (a request runs entirely on the release it started on), then retires the old versions;
  ``rollback`` promotes the previous release the same way; ``shadow`` sends a sampled fraction of live studies
  to a candidate classifier version as well (never returning its answer) and counts agreement per class.
"""
from __future__ import annotations

import json
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cxr.model_config import parse, render
from cxr.release_record import RELEASE, STATE, load_state, pins_of
from cxr.specs import CLASSIFIER, ENSEMBLE_NAME, LUNG_SEGMENTATION, MODEL_SPECS, ROUTER
from cxr.triage import Thresholds
from export.repository_files import install_python_model

MANIFEST = "manifest.json"
PUBLISHABLE = (LUNG_SEGMENTATION.role, CLASSIFIER.role)  # roles with a test-split metric to gate on
SHADOW_PARAMS = ("shadow_model", "shadow_version", "shadow_fraction")


@dataclass
class Gate:
    name: str
    passed: bool
    detail: str


# -- repository state ------------------------------------------------------------------------------------
def save_state(repository: str | Path, state: dict) -> None:
    path = Path(repository) / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def model_version_string(role: str, version: int, digest: str) -> str:
    return f"{MODEL_SPECS[role].name}@{version}:{digest[:12]}"


def write_release(repository: Path, release: int, pins: dict[str, int], thresholds: Path,
                  model_versions: dict[str, str]) -> dict:
    """Write ``triage_router/<release>/`` (router code, ``cxr``, thresholds, ``release.json``); returns it."""
    version_dir = repository / ROUTER.role / str(release)
    install_python_model(f"{ROUTER.role}/1", version_dir)
    if thresholds.resolve() != (version_dir / "thresholds.json").resolve():
        shutil.copy(thresholds, version_dir / "thresholds.json")
    record = {"release": release, "models": {**pins, ROUTER.role: release}, "model_versions": model_versions,
              "thresholds_version": json.loads(thresholds.read_text())["version"]}
    (version_dir / RELEASE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_configs(repository: Path, pins: dict[str, int]) -> None:
    """Pin every model's ``config.pbtxt`` and the ensemble's steps to ``pins`` (what a restart loads)."""
    for role, version in pins.items():
        write_versions(repository, role, [version])
    write_ensemble_pins(repository, pins)


def write_versions(repository: Path, role: str, versions: list[int]) -> None:
    """Set ``role``'s on-disk ``version_policy`` (Triton re-reads it when it loads the ensemble)."""
    path = repository / role / "config.pbtxt"
    config = parse(path.read_text())
    config.version_policy.specific.versions[:] = versions
    path.write_text(render(config))


def write_ensemble_pins(repository: Path, pins: dict[str, int]) -> None:
    path = repository / ENSEMBLE_NAME / "config.pbtxt"
    config = parse(path.read_text())
    for step in config.ensemble_scheduling.step:
        step.model_version = pins[step.model_name]
    path.write_text(render(config))


def freeze(directory: Path) -> None:
    """Published versions are immutable: read-only files."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def next_version(model_dir: Path) -> int:
    return max(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) + 1


def publish_thresholds(repository: str | Path, thresholds: str | Path) -> int:
    """A new thresholds file as a release of its own (same model versions); returns the release number."""
    repository, thresholds = Path(repository), Path(thresholds)
    Thresholds.load(thresholds)  # validates (raises ValueError naming the problem)
    state = load_state(repository)
    serving = state["releases"][str(state["serving"])]
    return new_release(repository, state, pins_of(state), thresholds, dict(serving["model_versions"]),
                        note=f"thresholds {json.loads(thresholds.read_text())['version']}", gates=[])


def new_release(repository: Path, state: dict, pins: dict[str, int], thresholds: Path, model_versions: dict,
                 note: str, gates: list) -> int:
    release = max(int(r) for r in state["releases"]) + 1
    record = write_release(repository, release, pins, thresholds, model_versions)
    freeze(repository / ROUTER.role / str(release))
    state["releases"][str(release)] = {**record, "status": "published", "note": note, "gates": gates,
                                       "published": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_state(repository, state)
    return release
