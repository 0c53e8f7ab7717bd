"""DPN92 with channel attention: DPN-SE (squeeze-excitation, 2021) and DPN92 + GCNet global-context blocks (2021).

timm's DPN92, with the attention module on the output of each dual-path block's last 1x1 convolution
(before it is split into the residual and the densely connected paths): timm ``SEModule`` (r=16) or
``GlobalContext`` (GCNet, fused by addition as in the GCNet paper).
"""
from __future__ import annotations

import timm
from timm.layers import GlobalContext, SEModule
from timm.models.dpn import DualPathBlock
from torch import nn

from training.models.registry import register_model


def _attend(backbone: nn.Module, make) -> nn.Module:
    for block in backbone.modules():
        if isinstance(block, DualPathBlock):
            channels = block.c1x1_c.conv.out_channels
            block.c1x1_c = nn.Sequential(block.c1x1_c, make(channels))
    return backbone


def _dpn92(num_classes: int, in_chans: int, **overrides) -> nn.Module:
    return timm.create_model("dpn92", pretrained=False, num_classes=num_classes, in_chans=in_chans, **overrides)


@register_model
def dpn92(num_classes: int = 5, in_chans: int = 1, **overrides) -> nn.Module:
    """Plain DPN92 (the baseline of both DPN papers)."""
    return _dpn92(num_classes, in_chans, **overrides)


@register_model
def dpn92_se(num_classes: int = 5, in_chans: int = 1, **overrides) -> nn.Module:
    """DPN-SE: DPN92 with squeeze-excitation (r=16) in every dual-path block."""
    return _attend(_dpn92(num_classes, in_chans, **overrides), lambda c: SEModule(c, rd_ratio=1 / 16, rd_divisor=1))


@register_model
def dpn92_gc(num_classes: int = 5, in_chans: int = 1, **overrides) -> nn.Module:
    """DPN92 + GCNet: a global-context block (additive fusion) in every dual-path block."""
    return _attend(_dpn92(num_classes, in_chans, **overrides),
                   lambda c: GlobalContext(c, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16))
