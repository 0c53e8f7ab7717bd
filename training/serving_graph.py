"""The served graphs in PyTorch: exactly the inputs and outputs of :mod:`cxr.specs`, around trained networks.

:mod:`export.onnx` exports them (and checks ONNX Runtime against them); the explainers, the cascade trainer and the
PyTorch baselines of the benchmarks run them as they are.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxr.specs import ModelSpec
from training.common import WEIGHTS_DIR, load_weights
from training.models import create_model


class SegmenterGraph(nn.Module):
    """Served segmentation graph: ``seg_image (B,1,H,W)`` -> binary ``lung_mask (B,1,H,W)`` (logit > 0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.model(image) > 0).to(image.dtype)


class ClassifierGraph(nn.Module):
    """Served classifier graph: image (+ lung mask) -> ``logits``, ``probabilities``, class-activation ``cam``.

    ``probabilities`` are calibrated: ``softmax(logits / temperature)``, with the temperature fitted on val at
    training time (:mod:`training.calibration`, stored in the weights' metadata; 1.0 for weights without one).
    ``logits`` stay the network's own.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(image, mask)  # a model without mask attention takes no mask
        logits = self.model.forward_head(features)
        # a lung-cropping model places its map back in the frame with the lung box, so it needs the mask again
        cam = (self.model.class_activation_map(features, mask) if getattr(self.model, "lung_crop", False)
               else self.model.class_activation_map(features))
        return logits, torch.softmax(logits / self.temperature, dim=1), cam


class ProbabilityGraph(nn.Module):
    """Served graph of a plain classifier (cascade stage 2): image -> ``logits``, ``probabilities``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits, dim=1)


def serving_graph(spec: ModelSpec, weights: str | Path | None = None) -> nn.Module:
    """The eval-mode module whose inputs/outputs are exactly ``spec.inputs``/``spec.outputs``."""
    model = create_model(spec.name, **({"num_classes": len(spec.labels)} if spec.labels else {}))
    meta = load_weights(model, weights or WEIGHTS_DIR / spec.weights)
    if not spec.labels:
        graph = SegmenterGraph(model)
    elif any(t.name == "cam" for t in spec.outputs):
        graph = ClassifierGraph(model, meta.get("temperature", 1.0))
    else:
        graph = ProbabilityGraph(model)
    return graph.eval()
