"""Publish a model version behind gates: a new release only if every gate passes (:mod:`export.release`).

:func:`publish` exports a model version N+1 (ONNX + parity check), writes it (read-only from then on) with a
``manifest.json`` (hash, training run, metrics, gates), runs the gates (parity; accuracy or IoU on the test split
>= the serving release's minus a tolerance; the safety gate's acceptance; latency within a factor of the serving
model's) and, when they pass, writes a new release. A failed gate writes no release: the serving one is untouched,
the manifest and the return value say why. Needs the training stack (PyTorch for the export, the evaluation).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxr.onnx_session import cpu_session
from cxr.release_record import ReleaseError, load_state, pins_of
from cxr.specs import LUNG_SEGMENTATION, MODEL_SPECS, ROUTER
from export.onnx import export_onnx
from export.release import (MANIFEST, PUBLISHABLE, Gate, freeze, model_version_string, new_release, next_version,
                            save_state)
from export.repository_files import ONNX_ADAPTER, install_python_model, sha256
from training.data.manifest import DEFAULT_MANIFEST
from training.evaluation import evaluate


def _quality(role: str, report: dict) -> tuple[str, float]:
    if role == LUNG_SEGMENTATION.role:
        return "test IoU", report["segmentation"]["iou"]
    return "test macro-F1", report["classification"]["macro_f1"]


def _latencies_ms(serving: Path, candidate: Path, role: str, repeats: int = 15) -> tuple[float, float]:
    """Median batch-1 latency of the serving and the candidate ONNX model (serving session settings, random
    input), timed in alternation: a load that comes and goes while the gate runs (a server under traffic)
    then falls on both alike, instead of on whichever was timed second."""
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
    if role not in PUBLISHABLE:
        raise ReleaseError(f"publish supports {', '.join(PUBLISHABLE)} (their gates have a test-split metric), not {role}")
    repository, weights = Path(repository), Path(weights)
    manifest = Path(manifest or DEFAULT_MANIFEST)
    state = load_state(repository)
    serving = state["releases"][str(state["serving"])]
    current = pins_of(state)
    version = next_version(repository / role)
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
        if after is None:  # the safety gate refused every study the candidate saw: nothing was scored
            gates.append(Gate("quality", False, f"{name}: no study scored (the safety gate refused "
                                                f"{report['gate']['pooled']['refuse']} of {report['gate']['pooled']['n']}) "
                                                f"vs serving {before:.4f}"))
        else:
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
    freeze(version_dir)
    release = None
    if passed:
        pins = {**current, role: version}
        versions = dict(serving["model_versions"])
        versions[role] = model_version_string(role, version, record["weights_sha256"])
        release = new_release(repository, state, pins, repository / ROUTER.role / str(current[ROUTER.role]) / "thresholds.json",
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


def _training_run(weights: Path) -> dict | None:
    """What the training run recorded beside the weights (``<name>.metrics.json``), if anything."""
    metrics = weights.with_suffix(".metrics.json")
    if not metrics.exists():
        return None
    data = json.loads(metrics.read_text())
    return {k: data[k] for k in ("model", "epochs", "run_dir", "test", "config") if k in data}
