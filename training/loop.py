"""The one epoch loop of the three trainers (segmenter, classifier, cascade stage 2)."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm


def train_epoch(model: torch.nn.Module, batches: Iterable, loss_of: Callable[..., torch.Tensor],
                optimizer: torch.optim.Optimizer, scheduler, desc: str,
                after_step: Callable[[], None] | None = None) -> float:
    """One pass over ``batches``: ``loss_of(*batch)``, backward, optimizer and schedule step, then ``after_step``
    (e.g. an EMA update); returns the mean loss. The model is put in training mode first."""
    model.train()
    losses = []
    for batch in tqdm(batches, desc=desc):
        loss = loss_of(*batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
    return float(np.mean(losses))
