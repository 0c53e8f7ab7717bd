"""Where things are in a checkout: the one definition of the folders every layer reads or writes.

A built model repository carries a copy of ``cxr/`` whose paths point nowhere useful; nothing in it uses them.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
THRESHOLDS = REPO / "configs" / "triage_thresholds.json"  # the shipped site thresholds
SAMPLES = REPO / "samples"
CXR_DATA = Path(os.environ.get("CXR_DATA", REPO / "../shared/data/cxr"))
"""The shared ``cxr`` data set (its ``manifest.csv``); ``CXR_DATA`` overrides. The other sets lie beside it."""
