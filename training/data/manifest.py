"""Read the shared dataset manifest (``file, mask, label, source, original_path, patient_id, license, split``)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MANIFEST = Path(os.environ.get("CXR_DATA", Path(__file__).resolve().parents[2] / "../shared/data/cxr")) / "manifest.csv"


@dataclass(frozen=True)
class Record:
    image: Path
    mask: Path | None
    label: str
    source: str
    patient_id: str
    split: str


def read_manifest(path: str | Path = DEFAULT_MANIFEST, split: str | None = None) -> list[Record]:
    """Rows of ``path``, optionally only one split; image/mask paths are resolved next to the manifest.

    Raises:
        FileNotFoundError: the manifest is missing (set ``CXR_DATA`` to the data folder).
        ValueError: a required column is missing.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path} (set CXR_DATA to the folder holding manifest.csv)")
    root = path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "mask", "label", "split"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks columns {sorted(missing)}")
        rows = [
            Record(
                image=root / row["file"],
                mask=root / row["mask"] if row.get("mask") else None,
                label=row["label"],
                source=row.get("source", ""),
                patient_id=row.get("patient_id", ""),
                split=row["split"],
            )
            for row in reader
        ]
    return [r for r in rows if split is None or r.split == split]
