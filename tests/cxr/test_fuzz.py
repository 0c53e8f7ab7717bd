"""Fuzzing the decoder (hypothesis): 100,000 generated inputs, and not one crash or hang.

Inputs are real encodings of a real radiograph (PNG 8/16-bit, JPEG, DICOM uncompressed/RLE/JPEG/JPEG-LS)
mutated at random: bit flips, overwritten bytes (often in the headers), truncation, insertion, deletion,
spliced seeds, plus raw random bytes behind each format's magic number. Every input must either decode to
a finite 2-D image within the size limits or raise :class:`ImageError`; any other exception, or one input
taking longer than the watchdog, fails the test (hypothesis then shrinks it to a minimal example).
"""
from __future__ import annotations

import io
import os
import signal

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import uid as uids

from client.dicom_files import make_dicom
from cxr.pixels import MAX_SIDE, MIN_SIDE, ImageError, decode_image
from cxr.preprocess import PrepareInput
from cxr.specs import CLASSIFIER

EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES", "100000"))
WATCHDOG_S = 20  # far above any honest decode (milliseconds here): only a hang trips it
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM")


def _seeds(gray: np.ndarray) -> list[bytes]:
    """Small real encodings (96 px) so that 100k decodes take a couple of minutes on two cores."""
    small = np.asarray(Image.fromarray(gray).resize((96, 80)))

    def pil(array, fmt, **kw) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **kw)
        return buffer.getvalue()

    def dicom(syntax=None, **kw) -> bytes:
        data = make_dicom(small.astype(np.float32), **kw)
        if syntax is None:
            return data
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.compress(syntax)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    return [
        pil(small, "PNG"), pil(small.astype(np.uint16) * 257, "PNG"), pil(np.stack([small] * 3, -1), "PNG"),
        pil(small, "JPEG", quality=90), pil(small, "JPEG", progressive=True),
        dicom(), dicom(photometric="MONOCHROME1", window=(2048, 4096)), dicom(bits_stored=8, rescale=(2.0, -10.0)),
        dicom(uids.RLELossless), dicom(uids.JPEGLSLossless),
    ]


OPS = ("flip", "overwrite", "truncate", "insert", "delete", "splice")


def mutate(seeds: list[bytes], kind: int, seed: int) -> bytes:
    """One generated input. Hypothesis draws (kind, seed); the edits come from a RNG seeded with it (few draws
    per example keep hypothesis fast enough for 100k; a failure still reproduces from the two integers)."""
    rng = np.random.default_rng(seed)
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 2048)))
    if kind == 1:
        return MAGIC[int(rng.integers(len(MAGIC)))] + rng.bytes(int(rng.integers(0, 4096)))
    data = bytearray(seeds[int(rng.integers(len(seeds)))])
    for _ in range(int(rng.integers(1, 7))):
        n = len(data)
        # half the edits land in the first 400 bytes, where the headers (sizes, bit depths, syntaxes) live
        pos = int(rng.integers(0, max(1, min(n, 400) if rng.random() < 0.5 else n)))
        op = OPS[int(rng.integers(len(OPS)))]
        if op == "flip" and n:
            data[min(pos, n - 1)] ^= 1 << int(rng.integers(8))
        elif op == "overwrite":
            chunk = rng.bytes(int(rng.integers(1, 9))) if rng.random() < 0.7 else (b"\xff\xff", b"\0\0\0\0", b"\xff\xd9")[int(rng.integers(3))]
            data[pos : pos + len(chunk)] = chunk
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = rng.bytes(int(rng.integers(1, 65)))
        elif op == "delete":
            del data[pos : pos + int(rng.integers(1, 65))]
        elif op == "splice":
            other = seeds[int(rng.integers(len(seeds)))]
            data[pos:] = other[int(rng.integers(len(other))) :]
    return bytes(data)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"decode took longer than {WATCHDOG_S} s")


@pytest.fixture
def watchdog():
    import logging

    logging.getLogger("pydicom").disabled = True  # it logs each odd element too
    previous = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    logging.getLogger("pydicom").disabled = False


@pytest.mark.filterwarnings("ignore")  # pydicom warns about every odd element it meets; that is the point here
def test_decoder_survives_100k_mutated_inputs(xray_pixels, watchdog):
    seeds = _seeds(xray_pixels.astype(np.uint8))
    prepare = PrepareInput(CLASSIFIER)
    outcomes, calls = {"decoded": 0, "refused": 0}, {"n": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 9), st.integers(0, 2**63 - 1))
    def decode_never_crashes(kind: int, seed: int) -> None:
        data = mutate(seeds, kind, seed)
        calls["n"] += 1
        signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
        try:
            # JPEGs also through the serving path's reduced-scale decode; other formats ignore the draft size
            for draft in ((None, 256) if data[:3] == MAGIC[1] else (None,)):
                try:
                    pixels = decode_image(data, draft_size=draft).pixels
                except ImageError as exc:
                    assert str(exc), "an ImageError must say what was wrong"
                    outcomes["refused"] += 1
                    continue
                assert pixels.ndim == 2 and pixels.dtype == np.float32 and np.isfinite(pixels).all()
                assert MIN_SIDE <= min(pixels.shape) and max(pixels.shape) <= MAX_SIDE
                assert np.isfinite(prepare(pixels)).all()
                outcomes["decoded"] += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    decode_never_crashes()
    inputs = calls["n"]
    print(f"fuzz: {inputs} inputs, {outcomes}")
    assert inputs >= EXAMPLES  # hypothesis ran every example (it does not stop early on this search space)
    assert outcomes["decoded"] > 0.02 * inputs and outcomes["refused"] > 0.3 * inputs  # both paths were exercised
