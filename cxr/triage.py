"""Triage logic: class probabilities -> priority (urgent / expedited / routine), top finding and reasons.

Thresholds come from a versioned JSON file (``configs/triage_thresholds.json``), never from code, so a
site can change them as a release of its own. Pure functions: the Triton ``triage_router`` calls them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

from cxr.gate import Gate, Verdict
from cxr.labels import LABELS, UNTRAINED

PRIORITIES = ("urgent", "expedited", "routine")


@dataclass(frozen=True)
class Thresholds:
    """Operating thresholds of one site release.

    Attributes:
        version: release id recorded in every result.
        urgent / expedited: label -> probability at or above which the study gets that priority.
        abnormal_expedited: ``1 - p(normal)`` at or above which the study is at least expedited.
        min_lung_fraction: below this lung coverage the image is flagged for a human (not a usable CXR?).
        cascade: stage 2 (covid vs other viral) runs when ``p(viral) + p(covid) >= run_at``; its covid
            probability at or above ``urgent_covid`` makes the study urgent. Absent: stage 2 never runs.
        quality: the safety gate fitted for the release's models (:class:`cxr.gate.Gate`, written by
            ``cxr thresholds gate``). Absent: no pixel gate (the DICOM tag rule still applies).
    """

    version: str
    urgent: dict[str, float] = field(default_factory=dict)
    expedited: dict[str, float] = field(default_factory=dict)
    abnormal_expedited: float = 1.0
    min_lung_fraction: float = 0.0
    cascade: dict[str, float] = field(default_factory=dict)
    quality: dict = field(default_factory=dict)

    @cached_property
    def gate(self) -> Gate | None:
        return Gate.from_dict(self.quality) if self.quality else None

    @classmethod
    def from_dict(cls, raw: dict) -> "Thresholds":
        unknown = {k for section in ("urgent", "expedited") for k in raw.get(section, {})} - set(LABELS)
        if unknown:
            raise ValueError(f"thresholds name unknown labels {sorted(unknown)}; labels are {list(LABELS)}")
        if "version" not in raw:
            raise ValueError("thresholds file has no 'version'")
        keys = {"version", "urgent", "expedited", "abnormal_expedited", "min_lung_fraction", "cascade", "quality"}
        cascade = raw.get("cascade", {})
        if cascade and not {"run_at", "urgent_covid"} <= set(cascade):
            raise ValueError(f"thresholds 'cascade' needs 'run_at' and 'urgent_covid', got {sorted(cascade)}")
        thresholds = cls(**{k: v for k, v in raw.items() if k in keys})
        _ = thresholds.gate  # a malformed quality section fails here, when the release is loaded
        return thresholds

    @classmethod
    def load(cls, path: str | Path) -> "Thresholds":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class TriageResult:
    priority: str
    top_finding: str
    top_probability: float
    reasons: list[str]
    thresholds_version: str
    models_run: list[str] = field(default_factory=lambda: ["lung_segmentation", "cxr_classifier"])
    cascade: dict | None = None
    quality: dict | None = None  # the safety gate's verdict, where the release has a gate

    def to_dict(self) -> dict:
        return asdict(self)


def needs_stage2(probabilities: Sequence[float], thresholds: Thresholds) -> bool:
    """Whether the cascade's covid model should look at this study (viral or covid likely)."""
    if not thresholds.cascade:
        return False
    probs = dict(zip(LABELS, map(float, probabilities)))
    return probs["viral"] + probs["covid"] >= thresholds.cascade["run_at"]


def with_stage2(result: TriageResult, covid_probability: float | None, thresholds: Thresholds,
                model: str = "covid_stage2", error: str | None = None) -> TriageResult:
    """``result`` after stage 2: its covid probability recorded, urgent at or above the threshold.

    A failed stage 2 (``error``) keeps the stage-1 decision and says so in the reasons.
    """
    reasons = list(result.reasons)
    priority = result.priority
    if error is not None:
        reasons.append(f"stage 2 ({model}) unavailable: {error}; stage-1 result kept")
        return replace(result, reasons=reasons, cascade={"model": model, "error": error})
    limit = thresholds.cascade["urgent_covid"]
    if covid_probability >= limit:
        reasons.append(f"stage 2 covid p={covid_probability:.2f} >= {limit:.2f} (urgent)")
        priority = _max_priority(priority, "urgent")
    else:
        reasons.append(f"stage 2 covid p={covid_probability:.2f} < {limit:.2f}")
    return replace(result, priority=priority, reasons=reasons, models_run=[*result.models_run, model],
                   cascade={"model": model, "covid_probability": round(float(covid_probability), 4)})


def with_quality(result: TriageResult, verdict: "Verdict") -> TriageResult:
    """``result`` with the gate's verdict recorded; a borderline (``flag``) study is at least ``expedited``, so
    that a human looks at it, never ``routine``."""
    if verdict.decision != "flag":
        return replace(result, quality=verdict.to_dict())
    reasons = [*result.reasons, f"image quality: {'; '.join(verdict.reasons)} "
               f"({verdict.detector} {verdict.score:.1f} >= {verdict.threshold:.1f}): check the image (expedited)"]
    return replace(result, priority=_max_priority(result.priority, "expedited"), reasons=reasons,
                   quality=verdict.to_dict())


def triage(probabilities: Sequence[float], lung_fraction: float, thresholds: Thresholds,
           verdict: "Verdict | None" = None) -> TriageResult:
    """Decide the priority of one study.

    Args:
        probabilities: one probability per label, in :data:`cxr.labels.LABELS` order.
        lung_fraction: fraction of the image the segmenter found to be lung.
        thresholds: the site's release.
        verdict: the safety gate's verdict on the study (:func:`with_quality`), where the release has a gate.

    Raises:
        ValueError: ``probabilities`` does not have one value per label.
    """
    result = _triage(probabilities, lung_fraction, thresholds)
    return result if verdict is None else with_quality(result, verdict)


def gate_decision(payload: dict) -> str:
    """The gate's decision recorded in a triage result (``accept`` where the release has no gate)."""
    return (payload.get("quality") or {}).get("decision", "accept")


def _triage(probabilities: Sequence[float], lung_fraction: float, thresholds: Thresholds) -> TriageResult:
    if len(probabilities) != len(LABELS):
        raise ValueError(f"expected {len(LABELS)} probabilities ({', '.join(LABELS)}), got {len(probabilities)}")
    probs = {label: float(p) for label, p in zip(LABELS, probabilities)}
    trained = {label: p for label, p in probs.items() if label not in UNTRAINED}
    top = max(trained, key=trained.get)  # an untrained label is never the finding
    reasons: list[str] = []
    priority = "routine"
    flagged: set[str] = set()
    for level, table in (("urgent", thresholds.urgent), ("expedited", thresholds.expedited)):
        hits = [label for label, limit in table.items()
                if label in trained and probs[label] >= limit and label not in flagged]  # untrained: ignored
        for label in hits:
            reasons.append(f"{label} p={probs[label]:.2f} >= {table[label]:.2f} ({level})")
            priority = _max_priority(priority, level)
        flagged.update(hits)
    abnormal = 1.0 - probs["normal"]
    if abnormal >= thresholds.abnormal_expedited:
        reasons.append(f"abnormal p={abnormal:.2f} >= {thresholds.abnormal_expedited:.2f} (expedited)")
        priority = _max_priority(priority, "expedited")
    if lung_fraction < thresholds.min_lung_fraction:
        reasons.append(
            f"lung fraction {lung_fraction:.3f} < {thresholds.min_lung_fraction:.3f}: lungs not found, check the image (expedited)"
        )
        priority = _max_priority(priority, "expedited")
    if not reasons:
        reasons.append(f"no threshold reached; top finding {top} p={probs[top]:.2f}")
    return TriageResult(priority, top, probs[top], reasons, thresholds.version)


def _max_priority(a: str, b: str) -> str:
    return a if PRIORITIES.index(a) <= PRIORITIES.index(b) else b
