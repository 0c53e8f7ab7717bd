"""Which DICOM objects the product may triage, by their tags: the one rule for every entry point.

The Triton preprocess model (so gRPC callers and the upload page) and the DICOM gateway both call
:func:`tag_refusal`; an object it names a reason for is refused there with that reason, never triaged.
Modality must say CR or DX (a type-1 attribute: an image without it is not known to be a radiograph);
body part and view position are checked where present (real modalities often leave them empty), and the
pixel side of the gate (:mod:`cxr.gate`) judges every image whatever its tags say.
"""
from __future__ import annotations

ACCEPTED_MODALITIES = ("CR", "DX")
CHEST_PARTS = ("CHEST", "THORAX", "LUNG")
FRONTAL_VIEWS = ("PA", "AP")


def tag_refusal(ds) -> str | None:
    """Why the DICOM dataset ``ds`` is not a CR/DX frontal chest image by its tags, or None if nothing says so."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in ACCEPTED_MODALITIES:
        return f"modality {modality or 'missing'} is not {'/'.join(ACCEPTED_MODALITIES)}"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST_PARTS:
        return f"body part {part} is not chest"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view and view not in FRONTAL_VIEWS:
        return f"view position {view} is not frontal ({'/'.join(FRONTAL_VIEWS)})"
    return None
