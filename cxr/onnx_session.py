"""The one ONNX Runtime CPU session configuration, shared by the served models and the in-process pipeline.

Worker threads do not spin while waiting for work (``allow_spinning=0``). On a 2-core host several
sessions take turns (segmentation, classification, in different processes when served): a session
whose idle pool spins steals the cores from the one that is running. Measured with
``benchmarks.raw`` at batch 1: 9.1 img/s spinning, 14.8 img/s not.

The CPU memory arena gives back, after every run, what the run did not keep (``shrink``). With the arena
kept as is, the dynamic batcher's ever-new batch sizes made it grow for minutes (segmentation stub
730 -> 1,100 MB in a 4-minute soak, server total +9 % and still rising); shrinking keeps memory flat at
about 10 % less served throughput (A/B, 90 s at concurrency 32: 12.7 vs 11.4 img/s). A hospital server
must not creep towards its memory limit, so ``shrink`` is the default; ``CXR_ORT_ARENA=keep`` opts out.
"""
from __future__ import annotations

import os
from pathlib import Path


def cpu_session(path: str | Path, threads: int = 2, arena: str | None = None):
    """An ``onnxruntime.InferenceSession`` on CPU: all graph optimisations, ``threads`` intra-op threads.

    ``arena`` (default ``$CXR_ORT_ARENA`` or ``shrink``): ``shrink`` = the arena gives back what a run did not
    keep at the end of every run (flat memory); ``keep`` = ONNX Runtime's arena as is (faster, grows to its
    high-water mark over many batch shapes).
    """
    import onnxruntime as ort

    arena = arena or os.environ.get("CXR_ORT_ARENA", "shrink")
    if arena not in ("keep", "shrink"):
        raise ValueError(f"arena must be 'keep' or 'shrink', got {arena!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if arena == "shrink":
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        plain_run = session.run
        session.run = lambda names, feeds, options=None: plain_run(names, feeds, options or run_options)
    return session
