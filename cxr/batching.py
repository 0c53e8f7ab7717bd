"""Pack the requests of one python-backend ``execute`` call into one batch and split the results back."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def concat_requests(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Concatenate per-request arrays along the batch axis; returns the batch and each request's size."""
    sizes = [int(a.shape[0]) for a in arrays]
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), sizes


def split_batch(batch: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Inverse of :func:`concat_requests`."""
    if sum(sizes) != batch.shape[0]:
        raise ValueError(f"batch of {batch.shape[0]} cannot be split into request sizes {list(sizes)}")
    return np.split(batch, np.cumsum(sizes)[:-1])


def non_finite(names: Sequence[str], arrays: Sequence[np.ndarray]) -> str | None:
    """The error for a request whose float inputs hold NaN or Inf (a raw client can send them), else None."""
    for name, array in zip(names, arrays):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"input {name!r} has non-finite values (NaN or Inf)"
    return None
