"""``cxr bench``: its parser and implementation are :mod:`benchmarks.run` (``cxr bench --help``)."""
from __future__ import annotations

from benchmarks.run import main

__all__ = ["main"]
