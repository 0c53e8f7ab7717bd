"""`cxr flops` reproduces the papers' own MAC and parameter counts (within 3 %)."""
from __future__ import annotations

import pytest

from benchmarks.flops import PAPER_ROWS, TOLERANCE, table


@pytest.fixture(scope="module")
def rows():
    return table()


@pytest.mark.parametrize("paper", PAPER_ROWS, ids=lambda p: f"{p.model}@{p.input_size}")
def test_paper_numbers_are_reproduced(rows, paper):
    row = next(r for r in rows if r["model"] == paper.model and r["input_size"] == paper.input_size)
    assert abs(row["mmacs_deviation"]) <= TOLERANCE, row
    if paper.params_m is not None:
        assert abs(row["params_deviation"]) <= TOLERANCE, row
    assert row["within_3pct"]


def test_mask_attention_costs_a_fraction_of_a_million_macs_and_no_parameters(rows):
    by = {(r["model"], r["input_size"]): r for r in rows}
    for name in ("resnet34", "resnet50", "vgg16", "inception_v3"):
        plain, masked = by[(name, 512)], by[(f"{name}_ma", 512)]
        assert masked["params_m"] == plain["params_m"] and masked["gmacs"] == plain["gmacs"]
        assert plain["ma_mmacs_per_position"] == 0 and 0.1 <= masked["ma_mmacs_per_position"] <= 1.0


def test_served_models_are_listed(rows):
    served = {r["model"]: r for r in rows if r["source"].startswith("served")}
    assert served["lung_unet_mobilenetv2"]["gmacs"] == pytest.approx(0.906, abs=0.01)
    classifier = served["resnet18_half"]  # ResNet-18 (11.17 M) at 128 px: 1.82 GMAC at 224 px x (128/224)^2
    assert classifier["params_m"] == pytest.approx(11.17, abs=0.02) and classifier["gmacs"] == pytest.approx(0.566, abs=0.01)
