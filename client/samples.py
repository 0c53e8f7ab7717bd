"""Write the demo's sample images from the shared data set (not committed: the data stays in ../shared).

    python -m client.samples --out build/samples

Picks test-split images under CC BY licences, one DICOM (CR, 12-bit) made from one of them, and one
truncated JPEG to show how a rejected input looks.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from client.dicom_files import make_dicom
from training.data.manifest import DEFAULT_MANIFEST

PER_LABEL = 2


def write_samples(out: str | Path, manifest: str | Path = DEFAULT_MANIFEST) -> list[Path]:
    out, manifest = Path(out), Path(manifest)
    out.mkdir(parents=True, exist_ok=True)
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and r["license"].startswith("CC BY ") and "N" not in r["license"]]
    written, count = [], {}
    for row in rows:
        if count.get(row["label"], 0) >= PER_LABEL:
            continue
        count[row["label"]] = count.get(row["label"], 0) + 1
        dst = out / f"{row['label']}_{Path(row['file']).name}"
        dst.write_bytes((manifest.parent / row["file"]).read_bytes())
        written.append(dst)
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
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    args = parser.parse_args()
    for path in write_samples(args.out, args.manifest):
        print(path)


if __name__ == "__main__":
    main()
