"""Cascade-SEMEnet (2020): SEME-ResNet50 screens normal/bacterial/viral, SEME-DenseNet169 splits viral into
covid vs other viral on lung-segmented images.

"SE": squeeze-excitation in every block, reduction 16 (timm ``SEModule``; timm's ``seresnet50`` for ResNet,
one SE on the new features of every DenseNet layer). "ME": :class:`training.layers.moex.MoEx` right after the
first convolution. Global average pooling head, He-uniform initialisation. CLAHE on a random 40 % of training
images is a data option (``training.data.datasets.clahe_augment``).
"""
from __future__ import annotations

from functools import partial

import timm
import torch
from timm.layers import SEModule
from timm.models.densenet import DenseBlock, DenseLayer
from torch import nn

from training.layers.moex import MoEx
from training.models.registry import register_model

SE_REDUCTION = 16


class SEMENet(nn.Module):
    """A timm classifier with MoEx after its stem convolution. ``forward(x)``; ``self.moex.exchange(perm)`` in training."""

    def __init__(self, backbone: nn.Module, stem_conv: str) -> None:
        super().__init__()
        self.moex = MoEx()
        parent, _, child = stem_conv.rpartition(".")
        owner = backbone.get_submodule(parent) if parent else backbone
        setattr(owner, child, nn.Sequential(getattr(owner, child), self.moex))
        self.backbone = backbone
        he_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def he_uniform_(model: nn.Module) -> None:
    """He-uniform (Kaiming uniform, fan-in, ReLU) weights for every conv and linear layer, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _SEDenseLayer(nn.Module):
    """A DenseNet layer whose new feature maps pass through squeeze-excitation."""

    def __init__(self, layer: DenseLayer, channels: int) -> None:
        super().__init__()
        self.layer = layer
        self.se = SEModule(channels, rd_ratio=1 / SE_REDUCTION, rd_divisor=1)

    def forward(self, x):
        return self.se(self.layer(x))


def _se_densenet(backbone: nn.Module) -> nn.Module:
    for block in [m for m in backbone.modules() if isinstance(m, DenseBlock)]:
        for name, layer in list(block.items()):
            block[name] = _SEDenseLayer(layer, layer.conv2.out_channels)
    return backbone


@register_model
def seme_resnet50(num_classes: int = 3, in_chans: int = 1, **overrides) -> SEMENet:
    """Cascade stage 1: SE-ResNet50 (r=16) + MoEx; normal / bacterial / viral."""
    backbone = timm.create_model("seresnet50", pretrained=False, num_classes=num_classes, in_chans=in_chans, **overrides)
    return SEMENet(backbone, "conv1")


@register_model
def seme_densenet169(num_classes: int = 2, in_chans: int = 1, **overrides) -> SEMENet:
    """Cascade stage 2: SE-DenseNet169 (r=16) + MoEx; covid vs other viral."""
    backbone = timm.create_model("densenet169", pretrained=False, num_classes=num_classes, in_chans=in_chans, **overrides)
    return SEMENet(_se_densenet(backbone), "features.conv0")


# Cheaper stage-2 candidates (issue 19: SE-DenseNet169's many small layers cost ~40 ms per image it sees).
@register_model
def seme_densenet121(num_classes: int = 2, in_chans: int = 1, **overrides) -> SEMENet:
    """SE-DenseNet121 (r=16) + MoEx: stage 2 with 58 dense layers instead of 82."""
    backbone = timm.create_model("densenet121", pretrained=False, num_classes=num_classes, in_chans=in_chans, **overrides)
    return SEMENet(_se_densenet(backbone), "features.conv0")


@register_model
def seme_resnet18_slim(num_classes: int = 2, in_chans: int = 1, **overrides) -> SEMENet:
    """SE-ResNet18 (r=16) + MoEx at half width (stages 32-64-128-256): stage 2 as 8 basic blocks, 2.8 M parameters
    (full width has 11.3 M: a 45 MB file, over the 30 MB a shipped weights file may take). timm rounds the SE
    width to a multiple of 8; ``rd_divisor=1`` keeps r=16 on every block, as the paper's SE."""
    se = partial(SEModule, rd_ratio=1 / SE_REDUCTION, rd_divisor=1)
    backbone = timm.create_model("seresnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 channels=(32, 64, 128, 256), stem_width=32, block_args={"attn_layer": se},
                                 **overrides)
    return SEMENet(backbone, "conv1")
