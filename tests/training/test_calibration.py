"""Temperature scaling, reliability bins / ECE and patient-bootstrap intervals on synthetic data with known answers."""
from __future__ import annotations

import numpy as np
import pytest


def _sample(logits: np.ndarray, temperature: float, rng) -> np.ndarray:
    p = np.exp(logits / temperature)
    p /= p.sum(1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in p])


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    from training.calibration import fit_temperature, nll

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (8000, 4))
    targets = _sample(logits, 2.0, rng)  # the network is over-confident by a factor 2
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(2.0, rel=0.08)
    assert nll(logits, targets, t) < nll(logits, targets, 1.0)


def test_ece_is_small_when_confidence_matches_accuracy_and_large_when_not():
    from training.metrics import calibration_bins

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20000, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    calibrated = _sample(logits, 1.0, rng)
    assert calibration_bins(calibrated, p)["ece"] < 0.02
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    result = calibration_bins(calibrated, overconfident)
    assert result["ece"] > 0.1
    assert sum(b["n"] for b in result["bins"]) == 20000 and len(result["bins"]) == 15


def test_bootstrap_intervals_resample_patients_and_bracket_the_estimate():
    """Three identical images a patient carry one patient's information: drawn by patient, the interval is
    as wide as for 100 images (about sqrt(3) wider than if the 300 images were independent)."""
    from training.metrics import bootstrap_intervals, headline

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 100)
    p = np.full((100, 3), 0.1)
    p[np.arange(100), np.where(rng.random(100) < 0.8, y, (y + 1) % 3)] = 0.8
    y, p = np.repeat(y, 3), np.repeat(p, 3, axis=0)
    patients = np.repeat(np.arange(100), 3).astype(str)
    point = headline(y, p)
    by_patient = bootstrap_intervals(y, p, patients, resamples=400)
    by_image = bootstrap_intervals(y, p, np.arange(300).astype(str), resamples=400)
    for key in ("accuracy", "macro_f1", "abnormal_auc"):
        assert by_patient[key][0] <= point[key] <= by_patient[key][1]
    width = {name: ci["accuracy"][1] - ci["accuracy"][0] for name, ci in (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 1.3 * width["image"], width
