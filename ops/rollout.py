"""Switch the release a running Triton serves: promote, roll back, shadow a candidate classifier.

The releases themselves (pins, gates, the repository state) are :mod:`export.release`'s; this module only
changes what a live server (explicit model-control mode, admin key) has loaded, one model load at a time.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from cxr.release_record import VERSIONED, ReleaseError, load_state, pins_of
from cxr.specs import CLASSIFIER, ENSEMBLE_NAME, ROUTER
from export.release import SHADOW_PARAMS, save_state, write_ensemble_pins, write_versions
from ops.admin import TritonAdmin

class Rollout:
    """Switch the releases running Tritons serve (explicit model-control mode; needs the admin key).

    Args:
        repository: the repository the servers serve (local path, shared by all replicas: the state lives here).
        admin: a :class:`ops.admin.TritonAdmin` for the server, or one per replica (the pods behind one Service).
            Each step runs on every replica before the next begins: both versions are loaded everywhere before any
            replica switches, so during the switch a study is answered entirely by the old release on one replica
            or entirely by the new one on another, never by a mix.
    """

    def __init__(self, repository: str | Path, admin: TritonAdmin | Sequence[TritonAdmin]) -> None:
        self.repository = Path(repository)
        self.admins = [admin] if isinstance(admin, TritonAdmin) else list(admin)
        if not self.admins:
            raise ReleaseError("no server to roll out on")

    def promote(self, release: int | None = None) -> dict:
        """Serve ``release`` (default: the newest published one); returns what changed."""
        state = load_state(self.repository)  # only releases that passed their gates exist
        target = int(release) if release is not None else max(int(r) for r in state["releases"])
        if str(target) not in state["releases"]:
            raise ReleaseError(f"release {target} does not exist (releases: {sorted(map(int, state['releases']))})")
        current = state["serving"]
        if target == current:
            return {"serving": current, "changed": []}
        old, new = pins_of(state, current), pins_of(state, target)
        changed = [role for role in VERSIONED if old[role] != new[role]]
        # The on-disk configs follow each step: loading the ensemble makes Triton re-read its dependencies.
        for role in changed:  # both versions ready before anything switches
            self._load(role, sorted({old[role], new[role]}))
        write_ensemble_pins(self.repository, new)
        def pin(ensemble: dict) -> None:
            for step in ensemble["ensemble_scheduling"]["step"]:
                step["model_version"] = new[step["model_name"]]

        self._reload(ENSEMBLE_NAME, pin)  # the switch: one load per replica, all steps at once
        for role in changed:  # old versions retire once their in-flight requests are done
            self._load(role, [new[role]])
        state["releases"][str(current)]["status"] = "retired"
        state["releases"][str(target)]["status"] = "serving"
        state["serving"] = target
        state["history"].append({"release": target, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        save_state(self.repository, state)
        return {"serving": target, "previous": current, "changed": {r: [old[r], new[r]] for r in changed}}

    def rollback(self) -> dict:
        """Serve the release that served before the current one."""
        state = load_state(self.repository)
        earlier = [h["release"] for h in state["history"] if h["release"] != state["serving"]]
        if not earlier:
            raise ReleaseError("nothing to roll back to: only one release has ever served")
        return self.promote(earlier[-1])

    def shadow(self, version: int, fraction: float = 0.1) -> dict:
        """Send ``fraction`` of the studies also to classifier ``version`` (0 stops it). A runtime setting:
        a restart or a promotion turns it off. Agreement: ``cxr_shadow_comparisons{label, agree}``."""
        if not 0 <= fraction <= 1:
            raise ReleaseError(f"shadow fraction must be within [0, 1], got {fraction}")
        serving = pins_of(load_state(self.repository))[CLASSIFIER.role]
        if fraction > 0:
            if not (self.repository / CLASSIFIER.role / str(version) / "model.onnx").exists():
                raise ReleaseError(f"{CLASSIFIER.role} has no version {version}")
            self._load(CLASSIFIER.role, sorted({serving, version}))
        def shadowing(config: dict) -> None:
            params = config.setdefault("parameters", {})
            for key in SHADOW_PARAMS:
                params.pop(key, None)
            if fraction > 0:
                params.update({"shadow_model": {"string_value": CLASSIFIER.role},
                               "shadow_version": {"string_value": str(version)},
                               "shadow_fraction": {"string_value": str(fraction)}})

        self._reload(ROUTER.role, shadowing)
        if fraction == 0:
            self._load(CLASSIFIER.role, [serving])
        return {"serving": serving, "shadow": version if fraction > 0 else None, "fraction": fraction}

    def _load(self, role: str, versions: list[int]) -> None:
        def policy(config: dict) -> None:
            config["version_policy"] = {"specific": {"versions": versions}}
            for key in ("cxr_stub_restart", *SHADOW_PARAMS):  # a promotion ends shadowing
                config.get("parameters", {}).pop(key, None)

        write_versions(self.repository, role, versions)
        self._reload(role, policy)
        for admin in self.admins:
            for version in versions:
                if not admin.is_model_ready(role, version):
                    raise ReleaseError(f"{role} version {version} did not become ready on {admin.base}")

    def _reload(self, name: str, edit: Callable[[dict], None]) -> None:
        """On every replica in turn: the config it serves for ``name``, changed by ``edit``, loaded."""
        for admin in self.admins:
            config = admin.model_config(name)
            edit(config)
            admin.load_model(name, config=config)
