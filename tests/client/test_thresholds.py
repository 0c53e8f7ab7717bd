"""Thresholds fitted to sensitivity targets: each is the largest that meets its target, on the served decision."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cxr.labels import LABELS


def _scored(n: int = 400, seed: int = 0):
    from client.thresholds import Scored
    from training.data.manifest import Record

    rng = np.random.default_rng(seed)
    labels = rng.choice(["normal", "bacterial", "viral", "covid"], n, p=[0.3, 0.3, 0.25, 0.15])
    logits = rng.normal(0, 1, (n, len(LABELS)))
    logits[np.arange(n), [LABELS.index(label) for label in labels]] += 2.0
    logits[:, LABELS.index("tb")] = -5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    records = [Record(Path(f"x_{i}.jpg"), None, label, "s", f"p{i // 2}", "val") for i, label in enumerate(labels)]
    return Scored(records, probs, np.full(n, 0.3), rng.random(n))


def _next_candidate(scored, target: str, fitted: float) -> float:
    """The smallest score of a positive study above the fitted threshold's 1e-4 rounding (fit_one rounds down to
    1e-4 from the last candidate that meets the target): the first candidate the search must have rejected."""
    from client.thresholds import _positives

    score = 1 - scored.probabilities[:, 0] if target == "abnormal" else scored.probabilities[:, LABELS.index(target)]
    return float(np.min(score[_positives(scored, target) & (score > fitted + 1e-4)]))


def test_fitted_thresholds_meet_each_target_and_are_the_largest_that_do():
    from client.thresholds import _at_least, _positives, _with, fit, operating_report, priorities
    from cxr.triage import Thresholds

    scored = _scored()
    shipped = Thresholds.load(Path(__file__).resolve().parents[2] / "configs" / "triage_thresholds.json")
    base = replace(shipped, quality={})  # the gate's own effect: test_the_gate_moves_priorities_as_served
    targets = {"abnormal": 0.95, "covid": 0.9}
    fitted = fit(base, scored, targets)
    assert "tb" not in fitted.urgent and fitted.expedited == {}  # untrained label dropped; one expedited rule
    report = operating_report(scored, fitted, targets, resamples=50)
    for target, goal in targets.items():
        assert report[f"{target}_sensitivity"]["value"] >= goal
        value = fitted.abnormal_expedited if target == "abnormal" else fitted.urgent[target]
        tighter = _with(fitted, target, _next_candidate(scored, target, value))  # the next one up fails
        positive = _positives(scored, target)
        assert (priorities(scored, tighter)[positive] <= _at_least(target)).mean() < goal
    shares = sum(report[f"share_{p}"]["value"] for p in ("urgent", "expedited", "routine"))
    assert shares == pytest.approx(1.0)
    lo, hi = report["abnormal_sensitivity"]["ci95"]
    assert lo <= report["abnormal_sensitivity"]["value"] <= hi


def test_versions_and_targets_are_parsed_strictly():
    from client.thresholds import next_version, parse_targets

    assert next_version("2026-12-01.2", today="2026-12-01") == "2026-12-01.3"
    assert next_version("2026-11-22.2", today="2026-12-01") == "2026-12-01.1"
    assert parse_targets(["abnormal=0.95", "covid=0.9"]) == {"abnormal": 0.95, "covid": 0.9}
    for bad in ("tb=0.9", "normal=0.9", "covid", "covid=1.5", "cat=0.5"):
        with pytest.raises(ValueError):
            parse_targets([bad])


def test_the_gate_moves_priorities_as_served():
    """A refused study is a miss (below every priority); a flagged one is at least expedited."""
    from client.thresholds import REFUSED, priorities
    from cxr.gate import NAMES, Detector, Gate
    from cxr.triage import PRIORITIES, Thresholds

    n = len(NAMES)
    gate = Gate((Detector("typicality", np.zeros(n), np.ones(n), 3.0, 6.0, precision=np.eye(n)),))
    scored = _scored(6)
    scored.probabilities[:] = np.array([0.97, 0.01, 0.01, 0.01, 0.0])  # all confidently normal
    scored.gate_features = np.zeros((6, n))
    scored.gate_features[1, 0], scored.gate_features[2, 0] = 4.0, 10.0  # flagged, refused
    thresholds = Thresholds("t", abnormal_expedited=0.5, quality=gate.to_dict())
    assert priorities(scored, thresholds).tolist() == [PRIORITIES.index("routine"), PRIORITIES.index("expedited"),
                                                        REFUSED, *[PRIORITIES.index("routine")] * 3]


def test_a_lower_bound_fit_holds_the_printed_interval_not_just_the_point_estimate():
    from client.thresholds import _at_least, _positives, _with, fit, operating_report, priorities
    from cxr.triage import Thresholds

    scored = _scored(n=300, seed=3)
    shipped = Thresholds.load(Path(__file__).resolve().parents[2] / "configs" / "triage_thresholds.json")
    # Only the abnormal rule is fitted here: the shipped release's urgent rules (fitted on real data) would
    # otherwise move these synthetic studies up on their own, and the test would measure the release, not the fit.
    base = replace(shipped, quality={}, urgent={})
    targets = {"abnormal": 0.9}
    point = fit(base, scored, targets)
    bounded = fit(base, scored, targets, lower_bound=frozenset({"abnormal"}), resamples=200)
    assert bounded.abnormal_expedited < point.abnormal_expedited  # a margin: more studies moved up
    report = operating_report(scored, bounded, targets, resamples=200)
    assert report["abnormal_sensitivity"]["ci95"][0] >= 0.9  # the interval it prints is the one it fitted
    above = _next_candidate(scored, "abnormal", bounded.abnormal_expedited)
    tighter = operating_report(scored, _with(bounded, "abnormal", above), targets, resamples=200)
    assert tighter["abnormal_sensitivity"]["ci95"][0] < 0.9  # and it is the largest threshold that holds it
    positive = _positives(scored, "abnormal")
    assert (priorities(scored, bounded)[positive] <= _at_least("abnormal")).mean() > 0.9


def test_the_fast_lower_bound_is_the_bootstrap_interval_on_the_same_draws():
    from training.metrics import group_bootstrap, group_draws, proportion_lower_bound

    rng = np.random.default_rng(1)
    groups = [f"p{i // 3}" for i in range(90)]
    positive, hits = rng.random(90) < 0.6, rng.random(90) < 0.8
    slow = group_bootstrap(groups, lambda idx: {"s": hits[idx][positive[idx]].mean()}, resamples=300, seed=5)
    fast = proportion_lower_bound(hits, positive, *group_draws(groups, resamples=300, seed=5))
    assert fast == pytest.approx(slow["s"][0])
