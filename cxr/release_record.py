"""What a built model repository serves: the release record, read the same way everywhere.

``releases.json`` at the repository root lists every release and which one serves; each release is one version
of ``triage_router`` whose ``release.json`` pins the model versions and names the thresholds version. The
in-process pipeline (:mod:`cxr.pipeline`), the triage router inside Triton and the release tools
(:mod:`export.release`, :mod:`ops.rollout`) read them through these functions; only :mod:`export.release` writes.
"""
from __future__ import annotations

import json
from pathlib import Path

from cxr.errors import CxrError
from cxr.specs import CLASSIFIER, COVID_STAGE2, LUNG_SEGMENTATION, PREPROCESS, ROUTER

STATE = "releases.json"
RELEASE = "release.json"
VERSIONED = (LUNG_SEGMENTATION.role, CLASSIFIER.role, COVID_STAGE2.role, PREPROCESS.role, ROUTER.role)


class ReleaseError(CxrError):
    """A release operation that cannot proceed (nothing was changed)."""


def load_state(repository: str | Path) -> dict:
    path = Path(repository) / STATE
    if not path.exists():
        raise ReleaseError(f"{repository} has no {STATE}; build it with python -m export.build_repository")
    return json.loads(path.read_text())


def pins_of(state: dict, release: int | None = None) -> dict[str, int]:
    """Model versions of ``release`` (default: the serving one)."""
    return {k: int(v) for k, v in state["releases"][str(release or state["serving"])]["models"].items()}


def serving_pins(repository: str | Path) -> dict[str, int]:
    """The serving release's versions; all 1 for a repository built before releases existed."""
    try:
        return pins_of(load_state(repository))
    except ReleaseError:
        return {role: 1 for role in VERSIONED}


def read_release(router_version: str | Path) -> dict:
    """The record of the release in one ``triage_router/<release>/`` folder: ``release`` (its number),
    ``models`` (role -> pinned version), ``model_versions`` (the strings every result reports) and
    ``thresholds_version``."""
    return json.loads((Path(router_version) / RELEASE).read_text())
