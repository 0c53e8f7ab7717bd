"""The images every benchmark sends: real encoded CXRs from the shared test split, as stored (JPEG)."""
from __future__ import annotations

from training.data.manifest import DEFAULT_MANIFEST, read_manifest


def benchmark_images(manifest: str = str(DEFAULT_MANIFEST), split: str = "test") -> list[bytes]:
    return [r.image.read_bytes() for r in read_manifest(manifest, split)]
