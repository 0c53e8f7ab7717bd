"""Blocks the libraries lack (mask attention); everything else comes from timm."""
from training.layers.mask_attention import MaskAttention, MaskContext, MaskedOutput

__all__ = ["MaskAttention", "MaskContext", "MaskedOutput"]
