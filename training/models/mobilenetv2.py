"""MobileNetV2 with MD-Conv and mask attention, the default triage classifier.

- MD-Conv: Hu et al., "MD-Conv: Multi-kernel depthwise convolution for chest X-ray classification" (2020):
  half the depthwise channels use 3x3 kernels, half 5x5 (timm's ``MixedConv2d``, selected by the block
  string ``k3.5``). The paper puts it in "stage 5"; we read that as the blocks at output stride 16
  (timm block groups 3 and 4: 64 and 96 channels), which reproduces the paper's +18 M MACs at 448 px.
- Mask attention: Xu et al., MANet (2021), see :mod:`training.layers.mask_attention`.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from torch import nn

from training.layers import MaskAttention, MaskContext
from training.models.registry import register_model

_STAGES = (
    "ds_r1_k{}_s1_c16",
    "ir_r2_k{}_s2_e6_c24",
    "ir_r3_k{}_s2_e6_c32",
    "ir_r4_k{}_s2_e6_c64",
    "ir_r3_k{}_s1_e6_c96",
    "ir_r3_k{}_s2_e6_c160",
    "ir_r1_k{}_s1_e6_c320",
)


def mobilenetv2_arch(mdconv_groups: tuple[int, ...] = ()) -> list[list[str]]:
    """MobileNetV2 block strings; groups listed in ``mdconv_groups`` get 3x3+5x5 mixed depthwise kernels."""
    return [[stage.format("3.5" if i in mdconv_groups else "3")] for i, stage in enumerate(_STAGES)]


class MaskedMobileNetV2(nn.Module):
    """MobileNetV2 classifier over a grayscale CXR, optionally with MD-Conv and mask attention.

    Args:
        num_classes: number of output logits.
        in_chans: input channels (1 for grayscale).
        mdconv_groups: block groups (0-6) that use MD-Conv.
        mask_attention: multiply post-BN features by the pooled lung mask in every block.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 5,
        in_chans: int = 1,
        mdconv_groups: tuple[int, ...] = (3, 4),
        mask_attention: bool = True,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.mask_context = MaskContext() if mask_attention else None
        act_layer = partial(MaskAttention, self.mask_context, nn.ReLU6) if mask_attention else nn.ReLU6
        self.backbone = EfficientNet(
            block_args=decode_arch_def(mobilenetv2_arch(tuple(mdconv_groups))),
            num_classes=num_classes,
            num_features=1280,
            stem_size=32,
            in_chans=in_chans,
            round_chs_fn=partial(round_channels, multiplier=1.0),
            act_layer=act_layer,
            drop_rate=drop_rate,
        )
        self.num_classes = num_classes
        self.feature_stride = 32

    @property
    def uses_mask(self) -> bool:
        return self.mask_context is not None

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` image (+ ``(B, 1, H', W')`` lung mask) -> ``(B, 1280, H/32, W/32)`` features."""
        if x.ndim != 4:
            raise ValueError(f"expected image (B, C, H, W), got {tuple(x.shape)}")
        if self.mask_context is None:
            return self.backbone.forward_features(x)
        if mask is None:
            raise ValueError("this model uses mask attention: pass the lung mask (B, 1, H, W)")
        with self.mask_context.use(mask.to(x.dtype)):
            return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(features, pre_logits=pre_logits)

    @property
    def head(self) -> nn.Linear:
        """The linear layer after global average pooling."""
        return self.backbone.classifier

    def class_activation_map(self, features: torch.Tensor) -> torch.Tensor:
        """CAM ``(B, num_classes, h, w)``: the linear head applied at every position (GAP+linear => Grad-CAM)."""
        return torch.einsum("kc,bchw->bkhw", self.head.weight, features) + self.head.bias[None, :, None, None]

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM reads (the last feature map, after its batch norm)."""
        return self.backbone.bn2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x, mask))


def _create(**params) -> MaskedMobileNetV2:
    return MaskedMobileNetV2(**params)


@register_model
def mobilenetv2_mdconv_ma(**overrides) -> MaskedMobileNetV2:
    """MobileNetV2 + MD-Conv (stride-16 stages) + mask attention: the served default."""
    return _create(**{"mdconv_groups": (3, 4), "mask_attention": True, **overrides})


@register_model
def mobilenetv2_mdconv(**overrides) -> MaskedMobileNetV2:
    """MobileNetV2 + MD-Conv, no mask attention (MD-Conv paper's model)."""
    return _create(**{"mdconv_groups": (3, 4), "mask_attention": False, **overrides})


@register_model
def mobilenetv2(**overrides) -> MaskedMobileNetV2:
    """Plain MobileNetV2 (MD-Conv paper's baseline)."""
    return _create(**{"mdconv_groups": (), "mask_attention": False, **overrides})


@register_model
def mobilenetv2_mdconv_s2(**overrides) -> MaskedMobileNetV2:
    """MD-Conv in every block group that starts with a stride-2 block (1, 2, 3, 5): the paper's ablation."""
    return _create(**{"mdconv_groups": (1, 2, 3, 5), "mask_attention": False, **overrides})
