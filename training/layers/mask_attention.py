"""Mask attention (MA) from MANet: Xu et al., "MANet: A two-stage deep learning method for
classification of COVID-19 from chest X-ray images", Neurocomputing 443 (2021).

In every convolution block the batch-normalised features are multiplied by the lung mask,
average-pooled to the block's resolution, before the activation. MA has no parameters.

timm builds its blocks with a ``BatchNormAct2d`` that applies ``act_layer`` after BN, so MA is
injected as an activation wrapper: ``act(x * pooled_mask)``. The mask itself is handed to all
wrappers of one network through a shared :class:`MaskContext` for the duration of a forward pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MaskContext:
    """Holds the lung mask ``(B, 1, H, W)`` of the forward pass in progress, pooled per resolution."""

    def __init__(self) -> None:
        self._mask: torch.Tensor | None = None
        self._pooled: dict[tuple[int, int], torch.Tensor] = {}

    @contextmanager
    def use(self, mask: torch.Tensor) -> Iterator[None]:
        """Make ``mask`` visible to every :class:`MaskAttention` bound to this context."""
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"lung mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        self._mask, self._pooled = mask, {}
        try:
            yield
        finally:
            self._mask, self._pooled = None, {}

    def pooled(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The mask average-pooled to ``size`` ``(h, w)``; ``None`` outside :meth:`use`."""
        if self._mask is None:
            return None
        if size not in self._pooled:
            mh, mw = int(self._mask.shape[-2]), int(self._mask.shape[-1])
            if mh < size[0] or mw < size[1]:
                raise ValueError(f"mask {mh}x{mw} is smaller than the feature map {size[0]}x{size[1]}")
            if mh % size[0] or mw % size[1]:  # odd sizes (Inception): adaptive average pooling
                self._pooled[size] = adaptive_pool(self._mask, size)
            else:
                kernel = (mh // size[0], mw // size[1])
                self._pooled[size] = F.avg_pool2d(self._mask, kernel, kernel) if kernel != (1, 1) else self._mask
        return self._pooled[size]


def adaptive_pool(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``adaptive_avg_pool2d``; while exporting to ONNX (whose exporter refuses non-divisible sizes) the same
    average as two products with constant bin matrices."""
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(mask, size)
    rows = _adaptive_pool_matrix(mask.shape[-2], size[0], mask)
    cols = _adaptive_pool_matrix(mask.shape[-1], size[1], mask)
    return rows @ mask @ cols.T


def _adaptive_pool_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)`` averaging matrix with ``adaptive_avg_pool``'s bins (as a product it exports to ONNX)."""
    matrix = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MaskedOutput(nn.Module):
    """Wrap a layer (a BN, or a conv where the network has no BN) so its output is multiplied by the pooled mask.

    For backbones whose blocks apply the activation themselves (torchvision ResNet, VGG, Inception), this is
    the same ``act(BN(x) * avgpool(mask))``: the wrapped BN sits right before the block's activation.
    Adds no parameters; the wrapped layer keeps its own.
    """

    def __init__(self, layer: nn.Module, context: MaskContext) -> None:
        super().__init__()
        self.layer = layer
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x)
        mask = self.context.pooled((int(x.shape[-2]), int(x.shape[-1])))
        return x * mask if mask is not None else x


class MaskAttention(nn.Module):
    """Multiply features by the pooled lung mask, then apply ``act``: ``act(x * avgpool(mask))``.

    Args:
        context: the shared :class:`MaskContext` of the network.
        act_layer: activation class applied after masking (e.g. ``nn.ReLU6``).
        inplace: passed to the activation (timm passes it to every activation layer).

    Shape:
        ``(B, C, h, w) -> (B, C, h, w)``; outside a ``context.use(mask)`` block it is just ``act``.
    """

    def __init__(self, context: MaskContext, act_layer: Callable[..., nn.Module] = nn.ReLU, inplace: bool = False):
        super().__init__()
        self.context = context
        try:
            self.act = act_layer(inplace=inplace)
        except TypeError:
            self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Spatial sizes are fixed per model, so they are taken as constants (also when traced for ONNX).
        mask = self.context.pooled((int(x.shape[-2]), int(x.shape[-1])))
        if mask is not None:
            x = x * mask
        return self.act(x)
