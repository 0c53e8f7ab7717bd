"""Releases of a model repository: publish a model version behind gates, promote it on a running Triton, roll back.

A **release** pins one version of every model and one thresholds file. It lives in its own version of
``triage_router``: ``triage_router/<R>/release.json`` (the pins, the model-version strings the results report,
the thresholds version) beside that release's ``thresholds.json``. So a new classifier is a release, and so is
a new thresholds file (site thresholds are separate from weights and released on their own).

``releases.json`` at the repository root records every release, its gates and status, which one serves and
the history of promotions. Every model's ``config.pbtxt`` pins the serving release (``version_policy``
specific, ensemble steps with explicit ``model_version``), so a restart serves the same release.

- :func:`publish` exports a model version N+1 (ONNX + parity check), writes it (read-only from then on) with a
  ``manifest.json`` (hash, training run, metrics, gates), runs the gates (parity; accuracy or IoU on the test
  split >= the serving release's minus a tolerance; latency within a factor of the serving model's) and, when
  they pass, writes a new release. A failed gate writes no release: the serving one is untouched, the
  manifest and the return value say why.
- :class:`Rollout` (Triton in explicit model-control mode, admin key): ``promote`` loads each changed model
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
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr.specs import CLASSIFIER, COVID_STAGE2, ENSEMBLE_NAME, LUNG_SEGMENTATION, MODEL_SPECS, PREPROCESS, ROUTER

STATE = "releases.json"
RELEASE = "release.json"
MANIFEST = "manifest.json"
VERSIONED = (LUNG_SEGMENTATION.role, CLASSIFIER.role, COVID_STAGE2.role, PREPROCESS.role, ROUTER.role)
PUBLISHABLE = (LUNG_SEGMENTATION.role, CLASSIFIER.role)  # roles with a test-split metric to gate on
SHADOW_PARAMS = ("shadow_model", "shadow_version", "shadow_fraction")


class ReleaseError(RuntimeError):
    """A release operation that cannot proceed (nothing was changed)."""


@dataclass
class Gate:
    name: str
    passed: bool
    detail: str


# -- repository state ------------------------------------------------------------------------------------
def load_state(repository: str | Path) -> dict:
    path = Path(repository) / STATE
    if not path.exists():
        raise ReleaseError(f"{repository} has no {STATE}; build it with python -m export.build_repository")
    return json.loads(path.read_text())


def save_state(repository: str | Path, state: dict) -> None:
    path = Path(repository) / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def pins_of(state: dict, release: int | None = None) -> dict[str, int]:
    """Model versions of ``release`` (default: the serving one)."""
    return {k: int(v) for k, v in state["releases"][str(release or state["serving"])]["models"].items()}


def serving_pins(repository: str | Path) -> dict[str, int]:
    """The serving release's versions; all 1 for a repository built before releases existed."""
    try:
        return pins_of(load_state(repository))
    except ReleaseError:
        return {role: 1 for role in VERSIONED}


def model_version_string(role: str, version: int, digest: str) -> str:
    return f"{MODEL_SPECS[role].name}@{version}:{digest[:12]}"


def write_release(repository: Path, release: int, pins: dict[str, int], thresholds: Path,
                  model_versions: dict[str, str]) -> dict:
    """Write ``triage_router/<release>/`` (router code, ``cxr``, thresholds, ``release.json``); returns it."""
    from export.build_repository import install_python_model

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
    from export.pbtxt import parse, render

    path = repository / role / "config.pbtxt"
    config = parse(path.read_text())
    config.version_policy.specific.versions[:] = versions
    path.write_text(render(config))


def write_ensemble_pins(repository: Path, pins: dict[str, int]) -> None:
    from export.pbtxt import parse, render

    path = repository / ENSEMBLE_NAME / "config.pbtxt"
    config = parse(path.read_text())
    for step in config.ensemble_scheduling.step:
        step.model_version = pins[step.model_name]
    path.write_text(render(config))


def _freeze(directory: Path) -> None:
    """Published versions are immutable: read-only files."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _next_version(model_dir: Path) -> int:
    return max(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) + 1


# -- gates -----------------------------------------------------------------------------------------------
def _quality(role: str, report: dict) -> tuple[str, float]:
    if role == LUNG_SEGMENTATION.role:
        return "test IoU", report["segmentation"]["iou"]
    return "test macro-F1", report["classification"]["macro_f1"]


def _latencies_ms(serving: Path, candidate: Path, role: str, repeats: int = 15) -> tuple[float, float]:
    """Median batch-1 latency of the serving and the candidate ONNX model (serving session settings, random
    input), timed in alternation: a load that comes and goes while the gate runs (a server under traffic)
    then falls on both alike, instead of on whichever was timed second."""
    import numpy as np

    from cxr.onnx_session import cpu_session

    spec = MODEL_SPECS[role]
    feeds = {t.name: np.random.default_rng(0).standard_normal((1, *t.dims)).astype(np.float32) for t in spec.inputs}
    sessions = [cpu_session(serving), cpu_session(candidate)]
    times: list[list[float]] = [[], []]
    for session in sessions:
        session.run(None, feeds)
    for _ in range(repeats):
        for session, out in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feeds)
            out.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times[0])), float(np.median(times[1]))


def publish(repository: str | Path, role: str, weights: str | Path, *, tolerance: float = 0.01,
            latency_factor: float = 1.5, manifest: str | Path | None = None, split: str = "test") -> dict:
    """Publish ``weights`` as the next version of ``role``; returns ``{"version", "gates", "release"}``
    (``release`` None when a gate failed: the serving release is untouched)."""
    from client.evaluate import evaluate
    from export.build_repository import ONNX_ADAPTER, install_python_model, sha256
    from export.onnx import export_onnx
    from training.data.manifest import DEFAULT_MANIFEST

    if role not in PUBLISHABLE:
        raise ReleaseError(f"publish supports {', '.join(PUBLISHABLE)} (their gates have a test-split metric), not {role}")
    repository, weights = Path(repository), Path(weights)
    manifest = Path(manifest or DEFAULT_MANIFEST)
    state = load_state(repository)
    serving = state["releases"][str(state["serving"])]
    current = pins_of(state)
    version = _next_version(repository / role)
    version_dir = repository / role / str(version)
    record = {"role": role, "version": version, "weights": str(weights), "weights_sha256": sha256(weights),
              "published": time.strftime("%Y-%m-%dT%H:%M:%S"), "training_run": _training_run(weights),
              "thresholds_version": serving["thresholds_version"]}
    gates: list[Gate] = []
    try:
        parity = export_onnx(MODEL_SPECS[role], version_dir / "model.onnx", weights)
        gates.append(Gate("parity", True, f"max |ONNX - PyTorch| {parity.max_abs_diff}"))
    except RuntimeError as exc:
        gates.append(Gate("parity", False, str(exc)))
    if gates[-1].passed:
        install_python_model(ONNX_ADAPTER, version_dir)
        candidate_files = {role: version_dir / "model.onnx"}
        if "gate" not in serving.get("metrics", {}):  # the serving release's own numbers, measured once on the same split
            serving["metrics"] = evaluate(manifest, split, repository=repository, resamples=0)  # gates: point metrics
            save_state(repository, state)
        name, before = _quality(role, serving["metrics"])
        report = evaluate(manifest, split, repository=repository, onnx_files=candidate_files, resamples=0)
        _, after = _quality(role, report)
        record["metrics"] = {"segmentation": report["segmentation"], "classification": {
            k: report["classification"][k] for k in ("accuracy", "macro_f1")}}
        gates.append(Gate("quality", after >= before - tolerance,
                          f"{name} {after:.4f} vs serving {before:.4f} (tolerance {tolerance})"))
        gates += safety_gate_checks(role, record["weights_sha256"], serving["metrics"], report,
                                    repository / ROUTER.role / str(current[ROUTER.role]) / "thresholds.json", tolerance)
        old_ms, new_ms = _latencies_ms(repository / role / str(current[role]) / "model.onnx",
                                       version_dir / "model.onnx", role)
        gates.append(Gate("latency", new_ms <= latency_factor * old_ms,
                          f"batch-1 {new_ms:.1f} ms vs serving {old_ms:.1f} ms (budget x{latency_factor})"))
    passed = all(g.passed for g in gates)
    record.update(gates=[asdict(g) for g in gates], status="published" if passed else "rejected")
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    _freeze(version_dir)
    release = None
    if passed:
        pins = {**current, role: version}
        versions = dict(serving["model_versions"])
        versions[role] = model_version_string(role, version, record["weights_sha256"])
        release = _new_release(repository, state, pins, repository / ROUTER.role / str(current[ROUTER.role]) / "thresholds.json",
                               versions, note=f"{role} v{version}", gates=record["gates"])
    return {"role": role, "version": version, "gates": record["gates"], "release": release}


def safety_gate_checks(role: str, digest: str, serving: dict, candidate: dict, thresholds: Path,
                       tolerance: float) -> list[Gate]:
    """The safety gate's share of real studies it accepts must not fall (the quality check above only scores the
    studies it accepted), and a gate fitted for other weights of ``role`` is named: it still runs, but its
    features come from a model it was not fitted on; refit it (``cxr thresholds gate``) and publish those
    thresholds."""
    quality = json.loads(thresholds.read_text()).get("quality")
    if not quality:
        return []
    before, after = serving["gate"]["pooled"]["accepted"], candidate["gate"]["pooled"]["accepted"]
    checks = [Gate("gate acceptance", after >= before - tolerance,
                   f"real studies accepted by the safety gate {after:.4f} vs serving {before:.4f} (tolerance {tolerance})")]
    fitted = quality.get("fitted_for", {}).get(role)
    if fitted is not None and fitted != digest:
        checks.append(Gate("gate fitted for these weights", True,
                           f"warning: the safety gate was fitted for {role} weights {fitted[:12]}, not {digest[:12]}; "
                           "refit it with `cxr thresholds gate --publish` after promoting"))
    return checks


def publish_thresholds(repository: str | Path, thresholds: str | Path) -> int:
    """A new thresholds file as a release of its own (same model versions); returns the release number."""
    from cxr.triage import Thresholds

    repository, thresholds = Path(repository), Path(thresholds)
    Thresholds.load(thresholds)  # validates (raises ValueError naming the problem)
    state = load_state(repository)
    serving = state["releases"][str(state["serving"])]
    return _new_release(repository, state, pins_of(state), thresholds, dict(serving["model_versions"]),
                        note=f"thresholds {json.loads(thresholds.read_text())['version']}", gates=[])


def _new_release(repository: Path, state: dict, pins: dict[str, int], thresholds: Path, model_versions: dict,
                 note: str, gates: list) -> int:
    release = max(int(r) for r in state["releases"]) + 1
    record = write_release(repository, release, pins, thresholds, model_versions)
    _freeze(repository / ROUTER.role / str(release))
    state["releases"][str(release)] = {**record, "status": "published", "note": note, "gates": gates,
                                       "published": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_state(repository, state)
    return release


def _training_run(weights: Path) -> dict | None:
    """What the training run recorded beside the weights (``<name>.metrics.json``), if anything."""
    metrics = weights.with_suffix(".metrics.json")
    if not metrics.exists():
        return None
    data = json.loads(metrics.read_text())
    return {k: data[k] for k in ("model", "epochs", "run_dir", "test", "config") if k in data}


# -- rollout on a running server -------------------------------------------------------------------------
class Rollout:
    """Switch the releases a running Triton serves (explicit model-control mode; needs the admin key).

    Args:
        repository: the repository the server serves (local path: this is where the state lives).
        admin: a :class:`cxr.server.TritonAdmin` for the server.
    """

    def __init__(self, repository: str | Path, admin) -> None:
        self.repository, self.admin = Path(repository), admin

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
        ensemble = self.admin.model_config(ENSEMBLE_NAME)
        for step in ensemble["ensemble_scheduling"]["step"]:
            step["model_version"] = new[step["model_name"]]
        write_ensemble_pins(self.repository, new)
        self.admin.load_model(ENSEMBLE_NAME, config=ensemble)  # the switch: one load, all steps at once
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
        config = self.admin.model_config(ROUTER.role)
        params = config.setdefault("parameters", {})
        for key in SHADOW_PARAMS:
            params.pop(key, None)
        if fraction > 0:
            params.update({"shadow_model": {"string_value": CLASSIFIER.role},
                           "shadow_version": {"string_value": str(version)},
                           "shadow_fraction": {"string_value": str(fraction)}})
        self.admin.load_model(ROUTER.role, config=config)
        if fraction == 0:
            self._load(CLASSIFIER.role, [serving])
        return {"serving": serving, "shadow": version if fraction > 0 else None, "fraction": fraction}

    def _load(self, role: str, versions: list[int]) -> None:
        write_versions(self.repository, role, versions)
        config = self.admin.model_config(role)
        config["version_policy"] = {"specific": {"versions": versions}}
        for key in ("cxr_stub_restart", *SHADOW_PARAMS):  # a promotion ends shadowing
            config.get("parameters", {}).pop(key, None)
        self.admin.load_model(role, config=config)
        for version in versions:
            if not self.admin.is_model_ready(role, version):
                raise ReleaseError(f"{role} version {version} did not become ready")


# -- cxr models ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``cxr models status|publish|thresholds|promote|rollback|shadow``."""
    import argparse
    import sys

    from cxr.admin_key import AdminKeyError, find_key
    from cxr.server import TritonAdmin

    parser = argparse.ArgumentParser(prog="cxr models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="releases, their gates and which one serves")
    publish_cmd = sub.add_parser("publish", help="export + gate a new model version; a new release if it passes")
    publish_cmd.add_argument("model", choices=PUBLISHABLE)
    publish_cmd.add_argument("--weights", required=True, help="trained weights (.pt) for the model")
    publish_cmd.add_argument("--tolerance", type=float, default=0.01, help="allowed drop of IoU / macro-F1")
    publish_cmd.add_argument("--latency-factor", type=float, default=1.5, help="allowed batch-1 latency ratio")
    publish_cmd.add_argument("--manifest", help="CSV in the shared manifest format (default: the shared data)")
    thresholds_cmd = sub.add_parser("thresholds", help="a new site thresholds file as a release of its own")
    thresholds_cmd.add_argument("file")
    for name, text in (("promote", "serve a release (default: the newest)"), ("rollback", "serve the previous release"),
                       ("shadow", "also send a fraction of studies to a candidate classifier version")):
        cmd = sub.add_parser(name, help=text)
        if name == "promote":
            cmd.add_argument("release", nargs="?", type=int)
        if name == "shadow":
            cmd.add_argument("version", type=int, help="cxr_classifier version (see cxr models status)")
            cmd.add_argument("--fraction", type=float, default=0.1, help="share of studies (0 stops shadowing)")
        cmd.add_argument("--url", default="localhost:8000", help="Triton HTTP HOST:PORT")
        cmd.add_argument("--admin-key-file", help="the key `cxr serve` wrote (default: $CXR_ADMIN_KEY, else "
                                                  "admin.key beside --repository)")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            state = load_state(args.repository)
            for number, record in sorted(state["releases"].items(), key=lambda kv: int(kv[0])):
                failed = [g["name"] for g in record.get("gates", []) if not g["passed"]]
                print(f"release {number:>3}  {record['status']:<9} {record.get('note', ''):<28} "
                      f"thresholds {record['thresholds_version']}  models {record['models']}"
                      + (f"  failed gates: {failed}" if failed else ""))
        elif args.command == "publish":
            result = publish(args.repository, args.model, args.weights, tolerance=args.tolerance,
                             latency_factor=args.latency_factor, manifest=args.manifest)
            for gate in result["gates"]:
                print(f"gate {gate['name']:<8} {'pass' if gate['passed'] else 'FAIL'}  {gate['detail']}")
            if result["release"] is None:
                print(f"{args.model} v{result['version']} rejected: the serving release is unchanged")
                return 1
            print(f"{args.model} v{result['version']} published as release {result['release']} (cxr models promote)")
        elif args.command == "thresholds":
            print(f"release {publish_thresholds(args.repository, args.file)} published (cxr models promote)")
        else:
            admin = TritonAdmin(args.url, find_key(args.repository, args.admin_key_file))
            rollout = Rollout(args.repository, admin)
            if args.command == "shadow":
                result = rollout.shadow(args.version, args.fraction)
            else:
                result = rollout.promote(args.release) if args.command == "promote" else rollout.rollback()
            print(json.dumps(result))
    except (ReleaseError, AdminKeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
