"""MoEx, moment exchange (Li et al., CVPR 2021), as Cascade-SEMEnet uses it after the first convolution.

During training, the per-instance moments (mean and standard deviation over the channels at each position,
PONO) of sample ``i``'s features are replaced by those of sample ``perm[i]``; the loss then mixes the two
labels: ``lam * CE(y) + (1 - lam) * CE(y[perm])``. Outside :meth:`MoEx.exchange` (and in eval) it is the identity.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MoEx(nn.Module):
    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self._perm: torch.Tensor | None = None

    @contextmanager
    def exchange(self, perm: torch.Tensor) -> Iterator[None]:
        """Exchange moments with ``perm`` (a permutation of the batch) during this block."""
        self._perm = perm
        try:
            yield
        finally:
            self._perm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._perm is None or not self.training:
            return x
        mean = x.mean(dim=1, keepdim=True)
        std = (x.var(dim=1, keepdim=True) + self.eps).sqrt()
        return (x - mean) / std * std[self._perm] + mean[self._perm]


def moex_loss(logits: torch.Tensor, target: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """MoEx's interpolated loss for moments exchanged with ``perm``."""
    return lam * F.cross_entropy(logits, target) + (1 - lam) * F.cross_entropy(logits, target[perm])
