"""``cxr gateway``: the DICOM gateway (Storage SCP -> durable spool -> Triton -> results to the PACS and worklist)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cxr.errors import CxrError
from gateway.outbox import Destinations
from gateway.service import DicomTLS, GatewayConfig, parse_destination, run


def parser() -> argparse.ArgumentParser:
    gateway = argparse.ArgumentParser(prog="cxr gateway", description=__doc__)
    gateway.add_argument("--ae-title", default="CXRGW")
    gateway.add_argument("--port", type=int, default=11112)
    gateway.add_argument("--triton", default="localhost:8001", help="Triton gRPC HOST:PORT")
    gateway.add_argument("--destination", help="where results go by C-STORE: AET@HOST:PORT (the PACS)")
    gateway.add_argument("--stow", metavar="URL", help="DICOMweb base URL: store results by STOW-RS (beside or "
                                                       "instead of --destination)")
    gateway.add_argument("--spool", required=True, help="durable spool directory")
    gateway.add_argument("--allow-ae", action="append", metavar="AET", help="calling AE titles accepted (repeat)")
    gateway.add_argument("--workers", type=int, default=2)
    gateway.add_argument("--hl7", metavar="HOST:PORT", help="send each result as HL7 v2.5.1 ORU^R01 over MLLP")
    gateway.add_argument("--hl7-sequence", action="store_true",
                         help="HL7 by the sequence number protocol (MSH-13/MSA-4): in order and exactly once, for "
                              "receivers that implement it (gateway.hl7_sequence)")
    gateway.add_argument("--fhir", metavar="URL", help="POST each result as a FHIR R4 transaction bundle to this base URL")
    gateway.add_argument("--webhook", metavar="URL", help="POST a JSON alert here for every urgent result")
    gateway.add_argument("--tls-cert", help="PEM certificate: accept DICOM over TLS only (with --tls-key)")
    gateway.add_argument("--tls-key", help="PEM private key of --tls-cert")
    gateway.add_argument("--tls-ca", help="PEM CA that signs peer certificates (callers with --tls-mutual; the destination)")
    gateway.add_argument("--tls-mutual", action="store_true", help="callers must present a certificate signed by --tls-ca")
    gateway.add_argument("--destination-tls", action="store_true", help="send results to the destination over TLS")
    gateway.add_argument("--max-wait", type=float, default=900.0,
                         help="seconds a study may wait before it is taken first, at high priority (0: never)")
    gateway.add_argument("--metrics-port", type=int, default=9108, help="Prometheus metrics (0: off)")
    gateway.add_argument("--web-port", type=int, default=0, help="serve the upload page on this port (0: off)")
    return gateway


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.destination and not args.stow:
        raise CxrError("give --destination AET@HOST:PORT (C-STORE) and/or --stow URL (DICOMweb) for the results")
    if args.hl7_sequence and not args.hl7:
        raise CxrError("--hl7-sequence is a way of sending HL7: give --hl7 HOST:PORT too")
    if args.destination:
        parse_destination(args.destination)  # fail fast on a malformed destination
    if bool(args.tls_cert) != bool(args.tls_key) or ((args.tls_mutual or args.destination_tls) and not args.tls_cert):
        raise CxrError("DICOM TLS needs --tls-cert and --tls-key together (and both for --tls-mutual / --destination-tls)")
    config = GatewayConfig(ae_title=args.ae_title, port=args.port, triton=args.triton, destination=args.destination,
                           spool=Path(args.spool), allow_ae=tuple(args.allow_ae or ()), workers=args.workers,
                           max_wait_s=args.max_wait if args.max_wait > 0 else None,
                           worklist=Destinations(hl7=args.hl7, fhir=args.fhir, webhook=args.webhook,
                                                  hl7_sequence=args.hl7_sequence),
                           stow=args.stow,
                           tls=DicomTLS(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca) if args.tls_ca else None,
                                        mutual=args.tls_mutual, scp=True, scu=args.destination_tls)
                           if args.tls_cert else None)
    return run(config, metrics_port=args.metrics_port, web_port=args.web_port)
