"""``cxr flops``: its parser and implementation are :mod:`benchmarks.flops` (``cxr flops --help``)."""
from __future__ import annotations

from benchmarks.flops import main

__all__ = ["main"]
