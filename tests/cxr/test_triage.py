from __future__ import annotations

import json

import pytest

from cxr.labels import LABELS, label_index
from cxr.triage import Thresholds, needs_stage2, triage, with_stage2

REPO_THRESHOLDS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "triage_thresholds.json"


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    """Fixed hand-set thresholds (the shipped file is fitted on data and changes with the models)."""
    return Thresholds.from_dict({"version": "test", "urgent": {"covid": 0.5, "tb": 0.5},
                                 "expedited": {"bacterial": 0.5, "viral": 0.5, "covid": 0.25, "tb": 0.25},
                                 "abnormal_expedited": 0.6, "min_lung_fraction": 0.05})


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
        (probs(tb=0.6, normal=0.4), 0.3, "expedited", "normal"),  # tb is untrained: only "abnormal 0.60" counts
        (probs(tb=0.9, normal=0.05, viral=0.05), 0.3, "expedited", "normal"),  # never the finding, never urgent
    ],
)
def test_priorities(thresholds, p, lung, priority, top):
    result = triage(p, lung, thresholds)
    assert (result.priority, result.top_finding) == (priority, top)
    assert result.reasons and result.thresholds_version == thresholds.version


def test_shipped_thresholds_are_a_fitted_release_without_untrained_labels():
    from cxr.labels import UNTRAINED

    shipped = Thresholds.load(REPO_THRESHOLDS)
    assert shipped.version
    assert set(shipped.urgent) | set(shipped.expedited) <= set(LABELS) - set(UNTRAINED)
    fitted = json.loads(REPO_THRESHOLDS.read_text())["fitted"]  # what `cxr thresholds fit` recorded
    assert fitted["split"] == "val" and fitted["targets"] and fitted["n"] > 0


def test_bad_thresholds_and_inputs_are_named(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"version": "x", "urgent": {"pneumothorax": 0.5}}))
    with pytest.raises(ValueError, match="pneumothorax"):
        Thresholds.load(bad)
    with pytest.raises(ValueError, match="expected 5 probabilities"):
        triage([0.5, 0.5], 0.3, Thresholds("v"))
    with pytest.raises(ValueError, match="unknown label 'pneumonia'"):
        label_index("pneumonia")


def _cascade_thresholds(**cascade):
    return Thresholds.from_dict({"version": "t", "urgent": {"covid": 0.9}, "cascade": {"run_at": 0.4, "urgent_covid": 0.6, **cascade}})


def test_stage2_runs_when_viral_plus_covid_reaches_the_threshold():
    t = _cascade_thresholds()
    assert needs_stage2([0.5, 0.1, 0.2, 0.2, 0.0], t)  # viral + covid = 0.4
    assert not needs_stage2([0.6, 0.1, 0.2, 0.1, 0.0], t)
    assert not needs_stage2([0.0, 0.0, 0.5, 0.5, 0.0], Thresholds.from_dict({"version": "no cascade"}))


def test_stage2_covid_makes_the_study_urgent_and_is_recorded():
    t = _cascade_thresholds()
    first = triage([0.3, 0.1, 0.3, 0.3, 0.0], 0.3, t)
    assert first.priority != "urgent" and first.models_run == ["lung_segmentation", "cxr_classifier"]
    after = with_stage2(first, 0.8, t)
    assert after.priority == "urgent" and after.models_run[-1] == "covid_stage2"
    assert after.cascade == {"model": "covid_stage2", "covid_probability": 0.8}
    assert "stage 2 covid p=0.80 >= 0.60 (urgent)" in after.reasons
    calm = with_stage2(first, 0.2, t)
    assert calm.priority == first.priority and "stage 2 covid p=0.20 < 0.60" in calm.reasons


def test_failed_stage2_keeps_stage1_and_says_so():
    t = _cascade_thresholds()
    first = triage([0.3, 0.1, 0.3, 0.3, 0.0], 0.3, t)
    failed = with_stage2(first, None, t, error="model not ready")
    assert failed.priority == first.priority and failed.models_run == first.models_run
    assert failed.cascade["error"] == "model not ready" and "unavailable" in failed.reasons[-1]


def test_incomplete_cascade_section_is_named():
    with pytest.raises(ValueError, match="'cascade' needs 'run_at' and 'urgent_covid'"):
        Thresholds.from_dict({"version": "x", "cascade": {"run_at": 0.3}})
