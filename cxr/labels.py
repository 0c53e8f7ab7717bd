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


UNTRAINED: tuple[str, ...] = ("tb",)
"""Labels with no training data: their output column is not a probability a site can act on. They are kept in
the tensor layout (five columns, stable for clients) but left out of thresholds, and reported as untrained."""


def reported_probabilities(values) -> dict[str, float | None]:
    """``{label: probability}`` as results report it: rounded to 4 places; ``None`` (JSON null) for an
    untrained label, whose column is never a number a site could act on."""
    return {label: None if label in UNTRAINED else round(float(p), 4) for label, p in zip(LABELS, values)}


def label_index(label: str) -> int:
    """Return the output index of ``label``.

    Raises:
        ValueError: if ``label`` is not one of :data:`LABELS`.
    """
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}; expected one of {list(LABELS)}") from None
