"""Fitting the safety gate: thresholds from val so at most 1 % of any real source is refused."""
from __future__ import annotations

import numpy as np
import pytest

from client.gate import FLAG_QUANTILE, MAX_REFUSED, acceptance, fit_gate, limit
from cxr.gate import NAMES


def _real(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES)))


def test_fitted_gate_keeps_real_sources_and_refuses_what_is_far_or_turned():
    train, val = _real(2000, 0), _real(600, 1)
    sources = ["a"] * 400 + ["b"] * 200
    turned = _real(600, 2)
    turned[:, NAMES.index("lung_contrast")] -= 4.0  # what inversion does to a real CXR
    gate = fit_gate(train, turned, val, sources)
    by_source = acceptance(gate, val, sources)
    assert all(r["refused"] <= MAX_REFUSED and r["flagged"] <= 2 * (1 - FLAG_QUANTILE) for r in by_source.values())
    held_out = _real(400, 3)  # new real studies, never seen by the fit
    assert acceptance(gate, held_out, ["c"] * 400)["c"]["accepted"] >= 0.98
    far = _real(100, 4) + 8.0  # a kind the fit never saw: far from everything
    assert acceptance(gate, far, ["far"] * 100)["far"]["refused"] == 1.0
    inverted = _real(200, 5)
    inverted[:, NAMES.index("lung_contrast")] -= 4.0
    decisions = [gate.judge(v) for v in inverted]
    assert np.mean([d.decision != "accept" for d in decisions]) >= 0.95
    assert {d.detector for d in decisions if d.decision != "accept"} >= {"orientation"}


def test_limits_refuse_at_most_the_share_asked_even_of_a_small_source():
    scores = np.arange(27, dtype=float)  # cohen's val is this small: 0.5 % of it is no study at all
    assert limit(scores, 0.005) > scores.max() and (scores >= limit(scores, 0.005)).sum() == 0
    assert (scores >= limit(scores, 0.04)).sum() == 1  # 4 % of 27: one study
    many = np.random.default_rng(0).normal(size=1000)
    assert (many >= limit(many, 0.01)).mean() == pytest.approx(0.01)
