"""Collect image files from paths given on the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus the image files (by suffix) inside given folders, sorted.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found
