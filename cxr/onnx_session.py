"""The one ONNX Runtime CPU session configuration, shared by the served models and the in-process pipeline.

Worker threads do not spin while waiting for work (``allow_spinning=0``). On a 2-core host several
sessions take turns (segmentation, classification, in different processes when served): a session
whose idle pool spins steals the cores from the one that is running. Measured with
``benchmarks.raw`` at batch 1: 9.1 img/s spinning, 14.8 img/s not.

The CPU memory arena is kept between runs (``keep``), and every batch runs as pieces of power-of-two size
(:func:`run_in_pieces`: 13 images = 8 + 4 + 1), so a session sees at most six batch shapes, never the dynamic
batcher's every size from 1 to 32. Until 2026-12-07 the arena was shrunk after every run instead, because kept
and fed every size it grew for minutes (segmentation stub 730 -> 1,100 MB in a 4-minute soak). Measured on a
2-core AMD EPYC Zen 4 (AVX-512 VNNI), FP32 profile, ``python -m benchmarks.soak --duration 150 --concurrency 32``
one after another: shrink 31.1 img/s, PSS 637 -> 802 MB (growth 6.4 %, the segmenter +124 MB); keep without
pieces 38.1 img/s, 866 -> 1,378 MB (+16 %, the segmenter +337 MB); keep with pieces **38.6 img/s, 875 -> 1,031
MB, flat after the first 20 s (+2.1 %)**. Pieces cost nothing here: FP32 runs at the same img/s at batch 1 and 8
(``benchmarks.raw``). The served steps also run every piece size once while loading (warm-up), so the arena
holds its high-water mark from the start: 10-minute soak without it 963 -> 1,040 MB over 3 minutes, with it
flat at ~1.17 GB (+0.8 % in 150 s). ``CXR_ORT_ARENA=shrink`` gives back ~0.45 GB for ~20 % of served
throughput. Runs and tables: ``docs/bench/arena_pieces_ab/``.
"""
from __future__ import annotations

import os
from pathlib import Path


def cpu_session(path: str | Path, threads: int = 2, arena: str | None = None):
    """An ``onnxruntime.InferenceSession`` on CPU: all graph optimisations, ``threads`` intra-op threads.

    ``arena`` (default ``$CXR_ORT_ARENA`` or ``keep``): ``keep`` = ONNX Runtime's arena as is (fast; flat
    when fed through :func:`run_in_pieces`); ``shrink`` = the arena gives back what a run did not keep at the
    end of every run (less memory, slower: every run faults its buffers in again).
    """
    import onnxruntime as ort

    arena = arena or os.environ.get("CXR_ORT_ARENA", "keep")
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


def piece_sizes(max_batch: int) -> list[int]:
    """Every batch size a session runs under a ``max_batch`` cap: 1, 2, 4, ... up to the largest power of two
    not above it (32 -> 1..32, 24 -> 1..16). ``piece_sizes(m)[-1]`` is the ``largest`` for :func:`run_in_pieces`."""
    if max_batch < 1:
        raise ValueError(f"need max_batch >= 1, got {max_batch}")
    return [1 << k for k in range(max_batch.bit_length())]


def power_of_two_pieces(n: int, largest: int) -> list[slice]:
    """Slices of ``range(n)`` whose lengths are powers of two no larger than ``largest``, largest first
    (``n=13``: 8, 4, 1). A session fed only these batch sizes sees at most ``log2(largest) + 1`` shapes."""
    if n < 0 or largest < 1 or largest & (largest - 1):
        raise ValueError(f"need n >= 0 and a power-of-two largest piece, got n={n}, largest={largest}")
    pieces, start = [], 0
    while start < n:
        size = min(largest, 1 << ((n - start).bit_length() - 1))
        pieces.append(slice(start, start + size))
        start += size
    return pieces


def run_in_pieces(session, names, feeds: dict, largest: int = 32) -> list:
    """``session.run(names, feeds)`` on the batch split into :func:`power_of_two_pieces` (every feed batch-first),
    the outputs concatenated back: the same result as one run, through at most six batch shapes."""
    import numpy as np

    n = len(next(iter(feeds.values())))
    pieces = power_of_two_pieces(n, largest)
    if len(pieces) == 1:
        return session.run(names, feeds)
    runs = [session.run(names, {k: v[piece] for k, v in feeds.items()}) for piece in pieces]
    return [np.concatenate(outputs) for outputs in zip(*runs)]
