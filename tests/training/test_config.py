"""Training recipes are typed: every shipped YAML loads, a misspelt or missing key is an error that names it."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").rglob("*.yaml"))
BASE = {"model": "resnet18", "epochs": 1, "batch_size": 4, "lr": 0.001, "weight_decay": 0.0, "seed": 1}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path):
    config = TrainConfig.from_yaml(path)
    assert config.epochs > 0 and config.batch_size > 0 and config.lr > 0
    assert TrainConfig.from_dict(config.to_dict()) == config  # what is recorded beside the weights reloads


def test_a_misspelt_key_is_refused_with_the_key_it_may_have_meant():
    with pytest.raises(ValueError, match=r"recipe.yaml: unknown key\(s\) 'ema_decy' \(did you mean 'ema_decay'\?\)"):
        TrainConfig.from_dict({**BASE, "ema_decy": 0.99}, "recipe.yaml")


def test_a_missing_key_is_named():
    with pytest.raises(ValueError, match="missing key\\(s\\) 'lr'"):
        TrainConfig.from_dict({k: v for k, v in BASE.items() if k != "lr"}, "recipe.yaml")


def test_defaults_are_the_recipe_without_the_optional_parts():
    config = TrainConfig.from_dict(BASE)
    assert config.ema_decay == 0.0 and config.patience is None and config.aspect_jitter == (1.0, 1.0)
    assert "patience" not in config.to_dict() and config.to_dict()["aspect_jitter"] == [1.0, 1.0]


def test_distillation_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match="pseudo_labels needs a teacher and its teacher_weights"):
        TrainConfig.from_dict({**BASE, "pseudo_labels": 10, "teacher": "lung_resunet18"})


def test_an_unknown_autocast_is_refused():
    with pytest.raises(ValueError, match="autocast must be 'bf16' or absent, got 'fp8'"):
        TrainConfig.from_dict({**BASE, "autocast": "fp8"})


@pytest.mark.parametrize("key, value, message", [
    ("hflip_p", 1.5, r"hflip_p must be in \[0, 1\], got 1.5"),
    ("mix_prob", -0.1, r"mix_prob must be in \[0, 1\], got -0.1"),
    ("class_balance", 2.0, r"class_balance must be in \[0, 1\], got 2.0"),
    ("mixup_alpha", -0.2, "mixup_alpha must be >= 0, got -0.2"),
    ("cutmix_alpha", -1.0, "cutmix_alpha must be >= 0, got -1.0"),
])
def test_out_of_range_augmentation_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**BASE, key: value})
