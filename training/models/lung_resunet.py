"""Lung segmentation U-Nets (segmentation-models-pytorch): ResNet encoders as in MANet stage 1, and a MobileNetV2
encoder with a narrow decoder, the <= 1 GMAC candidate of issue 19."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from training.models.registry import register_model


class LungResUNet(nn.Module):
    """U-Net with an smp encoder (ResNet, MobileNetV2, ...) producing one lung logit map.

    Exposes ``encoder`` (with ``out_channels`` and ``output_stride``), ``decoder`` and
    ``segmentation_head``; :meth:`forward` rejects inputs whose size is not a multiple of the stride.

    Args:
        encoder_name: smp encoder (``resnet18``, ``resnet34``, ``mobilenet_v2``, ...); trained from scratch (no hub
            weights).
        decoder_channels: U-Net decoder widths, deepest first.
        in_chans: input channels.
    """

    def __init__(self, encoder_name: str = "resnet18", decoder_channels=(128, 64, 32, 16, 16), in_chans: int = 1):
        super().__init__()
        unet = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None,
            in_channels=in_chans,
            classes=1,
            decoder_channels=tuple(decoder_channels),
        )
        self.encoder, self.decoder, self.segmentation_head = unet.encoder, unet.decoder, unet.segmentation_head
        self.output_stride = self.encoder.output_stride

    def check_input_shape(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        s = self.output_stride
        if x.ndim != 4 or h % s or w % s:
            nearest = (max(s, round(h / s) * s), max(s, round(w / s) * s))
            raise ValueError(f"input {tuple(x.shape)} must be (B, C, H, W) with H, W divisible by {s}; try {nearest}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> lung logits ``(B, 1, H, W)``."""
        self.check_input_shape(x)
        features = self.encoder(x)
        return self.segmentation_head(self.decoder(features))


@register_model
def lung_resunet18(**overrides) -> LungResUNet:
    return LungResUNet(**{"encoder_name": "resnet18", **overrides})


@register_model
def lung_resunet34(**overrides) -> LungResUNet:
    return LungResUNet(**{"encoder_name": "resnet34", **overrides})


@register_model
def lung_unet_mobilenetv2(**overrides) -> LungResUNet:
    """0.91 GMAC at 256 px (vs 3.48 for ``lung_resunet18``): MobileNetV2 encoder, decoder 64-32-16-16-8."""
    return LungResUNet(**{"encoder_name": "mobilenet_v2", "decoder_channels": (64, 32, 16, 16, 8), **overrides})
