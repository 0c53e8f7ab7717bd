"""DICOMweb for archives that speak it (many cloud DICOM stores speak nothing else), with dicomweb-client:
STOW-RS to store result objects, QIDO-RS + WADO-RS to find and fetch the studies ``cxr backfill`` triages.

    cxr backfill --dicomweb http://pacs:8042/dicom-web --spool /var/spool/cxr --since 2026-11-01 [--modality CR,DX]

Backfill puts each matching instance into the gateway's spool (a running ``cxr gateway`` on that spool triages
it like a C-STORE, at low priority); an instance the spool already knows (pending or done) is skipped, so a
second run, or one after a new model release over the same period, triages exactly what is not done yet.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from datetime import date

import pydicom
from pydicom.dataset import Dataset

from gateway.spool import Spool

LOW = 2  # DIMSE priority LOW: backfill never overtakes studies arriving live


def client(url: str):
    """A DICOMweb client without its own retry loop: the gateway's spool retries a failed study, backfill is rerun."""
    from dicomweb_client.api import DICOMwebClient

    web = DICOMwebClient(url)
    web.set_http_retry_params(retry=False)
    return web


def stow(url: str, objects: list[Dataset]) -> None:
    """STOW-RS ``objects`` (one study) to ``url``; raises on any failure the store reports."""
    response = client(url).store_instances(objects)
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        raise OSError(f"STOW-RS to {url}: {len(failed)} of {len(objects)} instances failed")


@dataclass
class Backfilled:
    found: int = 0
    queued: int = 0
    skipped: int = 0  # already pending or done in the spool


def backfill(url: str, spool: Spool, since: date, until: date | None = None, modalities=("CR", "DX"),
             progress=None) -> Backfilled:
    """Find the instances of ``modalities`` studied from ``since`` (to ``until``) by QIDO-RS, fetch each one the
    spool does not know by WADO-RS and spool it at low priority."""
    web = client(url)
    span = f"{since:%Y%m%d}-{until:%Y%m%d}" if until else f"{since:%Y%m%d}-"
    counts = Backfilled()
    for modality in modalities:
        found = web.search_for_instances(search_filters={"StudyDate": span, "Modality": modality}, get_remaining=True)
        for item in found:
            tags = Dataset.from_json(item)
            counts.found += 1
            uid = str(tags.SOPInstanceUID)
            if spool.known(uid):
                counts.skipped += 1
                continue
            instance = web.retrieve_instance(str(tags.StudyInstanceUID), str(tags.SeriesInstanceUID), uid)
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, instance, enforce_file_format=True)
            if spool.accept(buffer.getvalue(), uid, dicom_priority=LOW):
                counts.queued += 1
            else:
                counts.skipped += 1
            if progress:
                progress(counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cxr backfill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dicomweb", required=True, help="DICOMweb base URL of the archive (QIDO-RS / WADO-RS)")
    parser.add_argument("--spool", required=True, help="the spool directory of the cxr gateway that will triage")
    parser.add_argument("--since", required=True, type=date.fromisoformat, help="first study date, YYYY-MM-DD")
    parser.add_argument("--until", type=date.fromisoformat, help="last study date (default: open)")
    parser.add_argument("--modality", default="CR,DX", help="comma-separated modalities (default CR,DX)")
    args = parser.parse_args(argv)
    say = (lambda c: print(f"\r{c.found} found, {c.queued} queued, {c.skipped} already done or pending", end="",
                           file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    try:
        counts = backfill(args.dicomweb, Spool(args.spool), args.since, args.until,
                          tuple(m.strip().upper() for m in args.modality.split(",") if m.strip()), progress=say)
    except OSError as exc:  # requests' errors are OSErrors: an unreachable or refusing archive
        print(f"error: {args.dicomweb}: {exc}", file=sys.stderr)
        return 2
    if say:
        print(file=sys.stderr)
    print(f"{counts.found} instances found, {counts.queued} queued for triage, {counts.skipped} already done or pending")
    return 0
