"""Updating the python models' custom metrics (Triton's python-backend metrics API) without risk to a request.

A metric update must never fail the request it counts: while a model reloads, Triton may already have dropped
an old instance's metric families, and ``increment``/``observe`` then raise.
"""
from __future__ import annotations

from typing import Callable


def record(update: Callable[..., object], *args) -> None:
    """Call ``update(*args)`` (``metric.increment``, ``metric.observe``); a failure is dropped, not raised."""
    try:
        update(*args)
    except Exception:
        pass
