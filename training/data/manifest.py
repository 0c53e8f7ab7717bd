"""Read the shared dataset manifest (``file, mask, label, source, original_path, patient_id, license, split``)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cxr.paths import CXR_DATA

DEFAULT_MANIFEST = CXR_DATA / "manifest.csv"
DATA_ROOT = DEFAULT_MANIFEST.parent.parent
"""The folder holding the shared data sets; a config's ``manifests`` are relative to it."""
KERMANY224_MANIFEST = DATA_ROOT / "kermany224" / "manifest.csv"


@dataclass(frozen=True)
class Record:
    image: Path
    mask: Path | None
    label: str
    source: str
    patient_id: str
    split: str

    @property
    def cohort(self) -> str:
        """Where the image comes from, by file-name prefix: ``cohen``, ``kermany`` (512 px) or ``kermany224``.

        Metrics are reported per cohort: the sources differ in population, resolution and framing.
        """
        return self.image.name.split("_", 1)[0]


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


def read_manifests(paths: str | Path | Sequence[str | Path], split: str | None = None) -> list[Record]:
    """Rows of one or more manifests, in order (see :func:`read_manifest`).

    Raises:
        ValueError: two manifests put the same patient into different splits (the splits would leak).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    records = [r for path in paths for r in read_manifest(path)]
    splits: dict[str, str] = {}
    for r in records:
        if r.patient_id and splits.setdefault(r.patient_id, r.split) != r.split:
            raise ValueError(f"patient {r.patient_id} is in split {splits[r.patient_id]!r} and {r.split!r} "
                             f"across {[str(p) for p in paths]}")
    return [r for r in records if split is None or r.split == split]


def read_split(paths: Sequence[str | Path], split: str | None) -> list[Record]:
    """:func:`read_manifests`, refusing a split with no rows (what evaluating or fitting on it needs)."""
    records = read_manifests(paths, split)
    if not records:
        raise ValueError(f"{[str(p) for p in paths]} have no rows for split {split!r}")
    return records


def evenly(records: list[Record], count: int | None) -> list[Record]:
    """At most ``count`` records taken evenly over the list (deterministic; every source and label gets its share)."""
    if not count or len(records) <= count:
        return records
    return records[:: len(records) // count][:count]


def resolve_manifest(path: str | Path) -> Path:
    """A manifest path as given, or relative to :data:`DATA_ROOT` (how configs name them)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else DATA_ROOT / path
