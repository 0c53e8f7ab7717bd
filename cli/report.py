"""``cxr report``: its parser and implementation are :mod:`benchmarks.report` (``cxr report --help``)."""
from __future__ import annotations

from benchmarks.report import main

__all__ = ["main"]
