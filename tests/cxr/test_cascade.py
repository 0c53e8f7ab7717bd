"""route_batch: one stage-2 call for exactly the studies over the threshold; failures keep stage 1."""
from __future__ import annotations

import numpy as np

from cxr.cascade import route_batch
from cxr.specs import COVID_STAGE2
from cxr.triage import Thresholds

THRESHOLDS = Thresholds.from_dict({"version": "t", "cascade": {"run_at": 0.4, "urgent_covid": 0.6}})


def _batch():
    probs = np.array([[0.9, 0.05, 0.03, 0.02, 0.0], [0.2, 0.1, 0.3, 0.4, 0.0], [0.1, 0.1, 0.6, 0.2, 0.0]], np.float32)
    raw = np.zeros((3, 1, 256, 256), np.float32)
    raw[:, :, 40:200, 30:110] = 1
    raw[:, :, 40:200, 146:226] = 1
    return probs, raw, np.zeros((3, 1, 256, 256), np.float32)


def test_stage2_runs_once_on_the_due_studies():
    calls = []

    def stage2(images):
        calls.append(images.shape)
        return np.array([0.9, 0.1]), None

    routed = route_batch(*_batch(), THRESHOLDS, stage2)
    assert calls == [(2, 1, *COVID_STAGE2.input_size)]
    assert [r.result.cascade for r in routed] == [None, {"model": "covid_stage2", "covid_probability": 0.9},
                                                  {"model": "covid_stage2", "covid_probability": 0.1}]
    assert routed[1].result.priority == "urgent" and routed[0].result.models_run[-1] == "cxr_classifier"
    assert routed[0].mask.shape == (256, 256) and 0.3 < routed[0].lung_fraction < 0.45


def test_stage2_failure_keeps_the_stage1_decisions():
    routed = route_batch(*_batch(), THRESHOLDS, lambda images: (None, "model not ready"))
    assert [r.result.cascade for r in routed[1:]] == [{"model": "covid_stage2", "error": "model not ready"}] * 2
    assert all("covid_stage2" not in r.result.models_run for r in routed)
