"""The finding labels, in the one order every model head, client and report uses."""
from __future__ import annotations

from enum import Enum


class Finding(str, Enum):
    """Chest X-ray findings the triage service reports.

    ``tb`` is part of the label set but the shipped training data has no tuberculosis images
    (no licence-clean source exists); its probability is untrained and must not be trusted.
    """

    NORMAL = "normal"
    BACTERIAL = "bacterial"
    VIRAL = "viral"
    COVID = "covid"
    TB = "tb"


LABELS: tuple[str, ...] = tuple(f.value for f in Finding)
"""Label order of every classifier output (index i of ``probabilities`` is ``LABELS[i]``)."""


def label_index(label: str) -> int:
    """Return the output index of ``label``.

    Raises:
        ValueError: if ``label`` is not one of :data:`LABELS`.
    """
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}; expected one of {list(LABELS)}") from None
