"""Write the demo's sample inputs from the images bundled in ``samples/`` (no data set needed).

    python -m client.samples --out build/samples

Copies the bundled test-split CXRs (CC BY; sources and licences in ``samples/ATTRIBUTION.md``) and adds one
DICOM (CR, 12-bit) made from the first of them and one truncated JPEG, to show how a rejected input looks.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from client.dicom_files import make_dicom
from cxr.paths import SAMPLES

BUNDLED = SAMPLES


def write_samples(out: str | Path, source: str | Path = BUNDLED) -> list[Path]:
    """Copy the sample JPEGs from ``source`` into ``out``, add a DICOM and a truncated file; return the paths.

    Raises:
        FileNotFoundError: ``source`` holds no ``*.jpg`` (the repository's ``samples/`` folder is missing).
    """
    out, source = Path(out), Path(source)
    images = sorted(source.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no sample images (*.jpg) in {source}")
    out.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(image, out / image.name)) for image in images]
    first = written[0]
    pixels = np.asarray(Image.open(first).convert("L"), dtype=np.float32)
    dicom = out / f"{first.stem}_CR.dcm"
    dicom.write_bytes(make_dicom(pixels, modality="CR", bits_stored=12))
    truncated = out / "broken_truncated.jpg"
    truncated.write_bytes(first.read_bytes()[:4000])
    return [*written, dicom, truncated]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/samples")
    parser.add_argument("--source", default=str(BUNDLED), help="folder of sample JPEGs (default: the bundled ones)")
    args = parser.parse_args()
    for path in write_samples(args.out, args.source):
        print(path)


if __name__ == "__main__":
    main()
