"""The full-size recipes name registered models and load as training configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.common import load_config
from training.models import list_models

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_is_trainable(path):
    config = load_config(path)
    assert config.model in list_models() and config.input_size in (224, 448, 512)
    assert config.segmenter and config.epochs > 0 and config.batch_size > 0 and config.lr > 0


def test_there_is_one_per_paper_family():
    assert len(CONFIGS) >= 10
