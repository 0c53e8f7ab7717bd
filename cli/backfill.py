"""``cxr backfill``: its parser and implementation are :mod:`gateway.dicomweb` (``cxr backfill --help``)."""
from __future__ import annotations

from gateway.dicomweb import main

__all__ = ["main"]
