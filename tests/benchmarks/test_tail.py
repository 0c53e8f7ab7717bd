"""The tail decomposition (:mod:`benchmarks.tail`) on requests whose split is known by construction."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.tail import ENSEMBLE, OUTSIDE, summarise


def _request(image: int, ms: float, stage2: bool, segment: float) -> dict:
    steps = {"lung_segmentation": segment, "covid_stage2": 40.0 if stage2 else 0.0}
    inside = sum(steps.values())
    return {"image": image, "ms": ms, "stage2": stage2, "steps": {**steps, ENSEMBLE: inside, OUTSIDE: ms - inside}}


def test_the_cascade_branch_is_between_images_and_a_slow_step_is_within_one():
    # image 0 skips stage 2 (100 ms), once with a 100 ms slower segmentation; image 1 always runs it (140 ms);
    # every request spends 40 ms outside the ensemble
    rows = [_request(0, 100.0, False, 60.0) for _ in range(49)] + [_request(0, 200.0, False, 160.0)]
    rows += [_request(1, 140.0, True, 60.0) for _ in range(50)]
    s = summarise(rows)
    assert s["requests"] == 100 and s["images"] == 2
    assert s["branches"] == {"stage2_share": 0.5, "stage2_p50_ms": 140.0, "no_stage2_p50_ms": 100.0}
    assert s["between_images"]["p99_over_p50"] == pytest.approx(139.6 / 120.0)  # of the medians 100 and 140
    assert s["within_image"]["p99_over_median"] == pytest.approx(1.01)  # one request at 2x its image's median
    ms = [r["ms"] for r in rows]
    assert s["pooled"]["p99_over_p50"] == pytest.approx(np.percentile(ms, 99) / np.percentile(ms, 50))
    # the slowest tenth: the slow segmentation (100 ms over its median) and nine stage-2 requests (each 20 ms
    # over stage 2's median of 20 ms: half the requests skip it), nothing outside the ensemble
    excess = s["excess_slowest_tenth_ms"]
    assert excess == pytest.approx({"covid_stage2": 16.0, "lung_segmentation": 10.0, OUTSIDE: 0.0})
    assert list(excess) == ["covid_stage2", "lung_segmentation", OUTSIDE]  # largest first
