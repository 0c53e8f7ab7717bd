"""timm's EfficientNet-B0 from scratch (no hub weights): the "efficient net" of the seeded comparison.

Plain, without mask attention: its squeeze-excite blocks apply the activation to a 1x1 map, where MA's
pooled mask would only be a per-image scalar, so MA is compared on the MobileNetV2 and ResNet18 backbones.
"""
from __future__ import annotations

import timm
from torch import nn

from training.models.registry import register_model


@register_model
def efficientnet_b0(num_classes: int = 5, in_chans: int = 1, **overrides) -> nn.Module:
    """timm ``efficientnet_b0``, randomly initialised, grayscale input."""
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             **overrides)
