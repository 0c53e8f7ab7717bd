"""A training recipe (``training/configs/*.yaml``) as a typed object: every key known, unknown keys refused.

One dataclass serves the three trainers (segmenter, classifier, cascade stage 2); a key a trainer does not use
keeps its default. A misspelt key (``ema_decy``) is an error naming the file and the keys it may have meant,
never a silently ignored setting.
"""
from __future__ import annotations

import difflib
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    model: str  # registry name (training.models)
    epochs: int
    batch_size: int
    lr: float  # peak of the one-cycle schedule
    weight_decay: float
    seed: int
    threads: int = 2  # torch intra-op threads
    input_size: int | None = None  # square side in px; None: the served spec's
    manifests: list[str] | None = None  # relative to the shared data folder; None: the shared cxr set
    segmenter: str | None = None  # classifiers: the segmenter whose masks they see
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0: no EMA copy of the weights
    warmup_fraction: float = 0.3  # of the one-cycle schedule
    patience: int | None = None  # epochs without a better val score before stopping; None: never
    aspect_jitter: tuple[float, float] = (1.0, 1.0)  # random width/height stretch range (classifiers)
    hflip_p: float = 0.0  # probability of a left-right mirror (classifiers)
    # draw training images with probability ~ n_label ** -class_balance (classifiers): 0 the data's own label
    # frequencies, 1 every label equally often, 0.5 square-root balancing; an epoch is as long either way
    class_balance: float = 0.0
    # batch mixing (classifiers, timm.data.Mixup): a batch is mixed with probability mix_prob, by Mixup
    # (mixup_alpha > 0) or CutMix (cutmix_alpha > 0), half and half when both are set; targets become soft
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    moex_p: float = 0.0  # probability of a MoEx batch (models with a MoEx layer)
    moex_lambda: float = 0.9
    clahe_p: float = 0.0  # probability of CLAHE augmentation (cascade stage 2)
    workers: int = 0  # DataLoader worker processes (segmenter)
    init_from: str | None = None  # weights to start from, relative to the checkout
    # "bf16": bfloat16 autocast for the training forward pass on the CPU (classifier). ~2.8x faster where the CPU
    # has AMX (Intel Sapphire/Emerald Rapids); much slower where it has neither AMX nor AVX512-BF16
    autocast: str | None = None
    # segmenter distillation: up to this many train images per manifest that have no lung mask get a teacher's
    # post-processed mask as their target (0: none); the teacher is a registry name and its weights file
    pseudo_labels: int = 0
    teacher: str | None = None
    teacher_weights: str | None = None  # relative to the checkout

    def __post_init__(self) -> None:
        self.aspect_jitter = tuple(self.aspect_jitter)
        if self.autocast not in (None, "bf16"):
            raise ValueError(f"autocast must be 'bf16' or absent, got {self.autocast!r}")
        for key in ("hflip_p", "mix_prob", "class_balance"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.pseudo_labels and not (self.teacher and self.teacher_weights):
            raise ValueError("pseudo_labels needs a teacher and its teacher_weights")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            named = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ValueError(f"{source}: unknown key(s) {named}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        if absent := [k for k in required if k not in raw]:
            raise ValueError(f"{source}: missing key(s) {', '.join(map(repr, absent))}")
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {}, str(path))

    def to_dict(self) -> dict:
        """The recipe as recorded beside the weights and in ``metrics.json`` (unset optional keys left out)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}
