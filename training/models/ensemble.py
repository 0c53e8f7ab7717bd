"""Classifiers served as one graph: the mean of their logits (a deep ensemble, Lakshminarayanan et al. 2017).

Members are trained apart (each with its own recipe, :mod:`training.train_classifier`) and joined by
:mod:`training.ensemble`, which fits one temperature on val for the mean and writes one weights file. The
exported graph (:class:`training.serving_graph.ClassifierGraph`) sees what a single classifier offers:

- ``forward_features`` returns one feature map per member, ``forward_head`` the mean of their logits;
- ``class_activation_map`` is the mean of the members' CAMs, each brought to the finest member's grid by
  nearest-neighbour upsampling (an integer factor), so the spatial mean of the CAM is still exactly the logits:
  the safety gate's energy feature (:mod:`cxr.gate`) reads the logits back from the CAM. Grids that do not
  divide are refused.

Not served: :mod:`training.ensemble` measured MobileNetV2 + ``resnet18_half`` and ``resnet18_half_x2`` (two
seeds of it) against their members on val (README "Classifier"), and a member won both times.
Grad-CAM (:mod:`training.explain`) reads one classifier's ``cam_layer``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.registry import create_model, register_model


class ClassifierEnsemble(nn.Module):
    """Mean-of-logits ensemble of classifiers without mask attention, all taking the same input.

    ``members`` maps a member's key to its registry name; two members may share an architecture (seeds).
    """

    uses_mask = False

    def __init__(self, members: dict[str, str], num_classes: int = 5, **overrides) -> None:
        super().__init__()
        self.architectures = dict(members)
        self.members = nn.ModuleDict({key: create_model(name, num_classes=num_classes, **overrides)
                                      for key, name in members.items()})
        masked = [key for key, m in self.members.items() if getattr(m, "uses_mask", False)]
        if masked:
            raise ValueError(f"ensemble members take the image alone; {masked} use mask attention")

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``(B, 1, H, W)`` -> each member's last feature map (``mask`` is accepted and unused)."""
        return [m.forward_features(x) for m in self.members.values()]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Members' feature maps -> ``(B, num_classes)``: the mean of their logits."""
        return torch.stack([m.forward_head(f) for m, f in zip(self.members.values(), features)]).mean(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def class_activation_map(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``(B, num_classes, h, w)`` on the finest member grid; its spatial mean equals :meth:`forward_head`."""
        cams = [m.class_activation_map(f) for m, f in zip(self.members.values(), features)]
        size = max((c.shape[-2:] for c in cams), key=lambda s: s[0] * s[1])
        for c in cams:
            if size[0] % c.shape[-2] or size[1] % c.shape[-1]:
                raise ValueError(f"member CAM grids {[tuple(c.shape[-2:]) for c in cams]} are not integer multiples")
        return torch.stack([F.interpolate(c, size=tuple(size), mode="nearest") for c in cams]).mean(0)


@register_model
def mobilenetv2_mdconv_resnet18_half(num_classes: int = 5, **overrides) -> ClassifierEnsemble:
    """MobileNetV2 + MD-Conv (256 px) and ResNet-18 on the input pooled to 128 px: the mean of their logits."""
    return ClassifierEnsemble({"mobilenetv2_mdconv": "mobilenetv2_mdconv", "resnet18_half": "resnet18_half"},
                              num_classes, **overrides)


@register_model
def resnet18_half_x2(num_classes: int = 5, **overrides) -> ClassifierEnsemble:
    """Two ``resnet18_half`` trained with different seeds (1.13 GMAC): the mean of their logits."""
    return ClassifierEnsemble({"seed_a": "resnet18_half", "seed_b": "resnet18_half"}, num_classes, **overrides)
