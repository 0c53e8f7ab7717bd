"""Lung-box crop: resample the image inside the lung mask's bounding box (plus a margin) to a fixed square.

A classifier that reads only the box sees the lungs at a higher resolution and less of what tells the sources apart
(letterbox bands, labels, arms, the abdomen), and both framings of our data (512 px originals letterboxed, 224 px
squares squashed by their source) become the same framing: the lung box stretched to a square.

Everything here is tensor arithmetic that exports to ONNX (opset 17: CumSum, GridSample), so the served graph
crops exactly as training does. Boxes are in ``grid_sample``'s normalised coordinates (``align_corners=False``):
-1 and 1 are the outer edges of the frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _span(profile: torch.Tensor, trim: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` mask mass per row (or column) -> the pixel edges ``[lo, hi)`` holding all but ``trim`` of it
    at either end (a stray fragment of a few pixels does not widen the box)."""
    total = profile.sum(1, keepdim=True).clamp_min(1.0)
    cum = profile.cumsum(1) / total
    lo = (cum <= trim).sum(1).to(profile.dtype)  # first index whose cumulative share exceeds trim
    hi = (cum < 1.0 - trim).sum(1).to(profile.dtype) + 1.0  # one past the index where it reaches 1 - trim
    return lo, hi


def lung_box(mask: torch.Tensor, margin: float = 0.1, trim: float = 0.01, min_fraction: float = 0.02,
             min_size: float = 0.35) -> torch.Tensor:
    """``(B, 1, H, W)`` binary lung mask -> ``(B, 4)`` boxes ``x0, y0, x1, y1`` in normalised coordinates.

    The box holds the mask's mass trimmed by ``trim`` at each end, widened by ``margin`` of its size on every side,
    at least ``min_size`` of the frame on each axis (about its centre) and clipped to the frame. A mask covering
    less than ``min_fraction`` of the frame (nothing found: a blank film, not a chest) gives the whole frame.
    """
    m = mask[:, 0].float()
    height, width = m.shape[-2:]
    edges = []
    for profile, n in ((m.sum(1), width), (m.sum(2), height)):  # columns -> x, rows -> y
        lo, hi = _span(profile, trim)
        lo, hi = lo * (2.0 / n) - 1.0, hi * (2.0 / n) - 1.0
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * (1.0 + 2.0 * margin)
        half = half.clamp_min(min_size)
        edges.append(((centre - half).clamp(-1.0, 1.0), (centre + half).clamp(-1.0, 1.0)))
    (x0, x1), (y0, y1) = edges
    box = torch.stack([x0, y0, x1, y1], dim=1)
    found = m.mean((1, 2)) >= min_fraction
    one = torch.ones_like(x0)
    whole = torch.stack([-one, -one, one, one], dim=1)
    return torch.where(found[:, None], box, whole)


def _centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """The ``n`` pixel centres of an axis in normalised coordinates."""
    return (torch.arange(n, dtype=like.dtype) * 2 + 1) / n - 1


def _sample(values: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` of ``values`` at the separable grid ``xs (B, W) x ys (B, H)`` (border padding)."""
    grid = torch.stack([xs[:, None, :].expand(-1, ys.shape[1], -1), ys[:, :, None].expand(-1, -1, xs.shape[1])], dim=-1)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop(image: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image (B, C, H, W)`` inside ``box`` resampled to ``size``: bilinear at twice ``size``, then 2x2 means
    (a box shrunk by up to ~2x is not aliased)."""
    x0, y0, x1, y1 = (box[:, i, None] for i in range(4))
    xs = x0 + (_centres(2 * size[1], box)[None] + 1) / 2 * (x1 - x0)  # (B, 2 width)
    ys = y0 + (_centres(2 * size[0], box)[None] + 1) / 2 * (y1 - y0)  # (B, 2 height)
    return F.avg_pool2d(_sample(image, xs, ys), 2)


def uncrop(values: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`crop` for a map over the box (e.g. a class-activation map): ``(B, K, h, w)`` over each box
    -> ``(B, K, *size)`` over the whole frame; outside the box the map holds its value at the box's edge."""
    x0, y0, x1, y1 = (box[:, i, None] for i in range(4))
    us = (_centres(size[1], box)[None] - x0) / (x1 - x0) * 2 - 1  # where each frame position falls in the box
    vs = (_centres(size[0], box)[None] - y0) / (y1 - y0) * 2 - 1
    return _sample(values, us, vs)
