"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T`` fitted on val logits by minimising NLL.

The served probabilities are ``softmax(logits / T)``; ``T`` is stored with the weights (``meta["temperature"]``)
and the ONNX export divides the logits by it, so every consumer of ``probabilities`` gets calibrated numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, targets: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(logp)), np.asarray(targets)].mean())


def fit_temperature(logits: np.ndarray, targets: Sequence[int], bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The ``T`` in ``bounds`` that minimises val NLL (searched on ``log T``, where NLL is unimodal in practice)."""
    result = minimize_scalar(lambda log_t: nll(logits, targets, float(np.exp(log_t))),
                             bounds=tuple(np.log(bounds)), method="bounded")
    return float(np.exp(result.x))
