from __future__ import annotations

import json

import pytest

from cxr.labels import LABELS, label_index
from cxr.triage import Thresholds, triage

REPO_THRESHOLDS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "triage_thresholds.json"


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    return Thresholds.load(REPO_THRESHOLDS)


def probs(**kw) -> list[float]:
    p = [kw.get(label, 0.0) for label in LABELS]
    return p


@pytest.mark.parametrize(
    "p,lung,priority,top",
    [
        (probs(normal=0.9, bacterial=0.1), 0.3, "routine", "normal"),
        (probs(normal=0.2, covid=0.7, viral=0.1), 0.3, "urgent", "covid"),
        (probs(normal=0.3, bacterial=0.6, viral=0.1), 0.3, "expedited", "bacterial"),
        (probs(normal=0.35, bacterial=0.33, viral=0.32), 0.3, "expedited", "normal"),  # abnormal 0.65
        (probs(normal=0.7, covid=0.3), 0.3, "expedited", "normal"),  # covid above its expedite bar
        (probs(normal=0.95, viral=0.05), 0.01, "expedited", "normal"),  # no lungs found
        (probs(tb=0.6, normal=0.4), 0.3, "urgent", "tb"),
    ],
)
def test_priorities(thresholds, p, lung, priority, top):
    result = triage(p, lung, thresholds)
    assert (result.priority, result.top_finding) == (priority, top)
    assert result.reasons and result.thresholds_version == thresholds.version


def test_thresholds_file_is_versioned_and_only_names_known_labels(thresholds):
    assert thresholds.version
    assert set(thresholds.urgent) | set(thresholds.expedited) <= set(LABELS)


def test_bad_thresholds_and_inputs_are_named(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"version": "x", "urgent": {"pneumothorax": 0.5}}))
    with pytest.raises(ValueError, match="pneumothorax"):
        Thresholds.load(bad)
    with pytest.raises(ValueError, match="expected 5 probabilities"):
        triage([0.5, 0.5], 0.3, Thresholds("v"))
    with pytest.raises(ValueError, match="unknown label 'pneumonia'"):
        label_index("pneumonia")
