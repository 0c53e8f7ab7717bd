"""MobileNetV3-Large with MD-Conv (Hu et al. 2020 also report V3): timm's MobileNetV3 built from its own
block strings, with 3x3+5x5 mixed depthwise kernels in the stride-16 groups (3 and 4, 80 and 112 channels),
the same reading of "stage 5" as :mod:`training.models.mobilenetv2`, or in every group that starts with a
stride-2 block (the ablation; there MD-Conv also replaces the 5x5 kernels of groups 2 and 5).
"""
from __future__ import annotations

from functools import partial

from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

from training.models.registry import register_model

_LARGE = (  # timm mobilenetv3_large_100; "{k3}"/"{k5}" mark the depthwise kernels MD-Conv may replace
    ("ds_r1_k3_s1_e1_c16_nre",),
    ("ir_r1_k{k3}_s2_e4_c24_nre", "ir_r1_k{k3}_s1_e3_c24_nre"),
    ("ir_r3_k{k5}_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k{k3}_s2_e6_c80", "ir_r1_k{k3}_s1_e2.5_c80", "ir_r2_k{k3}_s1_e2.3_c80"),
    ("ir_r2_k{k3}_s1_e6_c112_se0.25",),
    ("ir_r3_k{k5}_s2_e6_c160_se0.25",),
    ("cn_r1_k1_s1_c960",),
)
STRIDE16_GROUPS = (3, 4)
STRIDE2_GROUPS = (1, 2, 3, 5)  # groups that start with a stride-2 block


def _mobilenetv3(mdconv_groups: tuple[int, ...], num_classes: int, in_chans: int, **overrides) -> MobileNetV3:
    arch = [[b.format(k3="3.5" if i in mdconv_groups else "3", k5="3.5" if i in mdconv_groups else "5")
             for b in group] for i, group in enumerate(_LARGE)]
    return MobileNetV3(
        block_args=decode_arch_def(arch),
        num_features=1280,
        stem_size=16,
        num_classes=num_classes,
        in_chans=in_chans,
        round_chs_fn=partial(round_channels, multiplier=1.0),
        act_layer=get_act_layer("hard_swish"),
        se_layer=partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels),
        **overrides,
    )


@register_model
def mobilenetv3(num_classes: int = 5, in_chans: int = 1, **overrides) -> MobileNetV3:
    """Plain MobileNetV3-Large."""
    return _mobilenetv3((), num_classes, in_chans, **overrides)


@register_model
def mobilenetv3_mdconv(num_classes: int = 5, in_chans: int = 1, **overrides) -> MobileNetV3:
    """MobileNetV3-Large with MD-Conv in the stride-16 groups."""
    return _mobilenetv3(STRIDE16_GROUPS, num_classes, in_chans, **overrides)


@register_model
def mobilenetv3_mdconv_s2(num_classes: int = 5, in_chans: int = 1, **overrides) -> MobileNetV3:
    """MobileNetV3-Large with MD-Conv in every group that starts with a stride-2 block (the ablation)."""
    return _mobilenetv3(STRIDE2_GROUPS, num_classes, in_chans, **overrides)
