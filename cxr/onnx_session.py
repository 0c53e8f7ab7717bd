"""The one ONNX Runtime CPU session configuration, shared by the served models and the in-process pipeline.

Worker threads do not spin while waiting for work (``allow_spinning=0``). On a 2-core host several
sessions take turns (segmentation, classification, in different processes when served): a session
whose idle pool spins steals the cores from the one that is running. Measured with
``benchmarks.raw`` at batch 1: 9.1 img/s spinning, 14.8 img/s not.
"""
from __future__ import annotations

from pathlib import Path


def cpu_session(path: str | Path, threads: int = 2):
    """An ``onnxruntime.InferenceSession`` on CPU: all graph optimisations, ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
