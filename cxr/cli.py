"""The ``cxr`` command line: serve, classify, evaluate, build-repository, gateway, backfill, explain, bench, flops,
report, models, thresholds.

Subcommands import their modules lazily, so ``cxr classify`` needs only the client dependencies.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys


# Commands whose arguments go unparsed to ``<module>.main(argv)``.
PASSTHROUGH = {"bench": "benchmarks.run", "flops": "benchmarks.flops", "report": "training.report",
               "models": "export.release", "thresholds": "client.thresholds", "backfill": "client.gateway.dicomweb"}


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cxr.admin_key import ensure_key, key_file_for
    from cxr.server import ServerError, TLSConfig, TritonServer

    tls = None
    if args.grpc_cert or args.grpc_key:
        tls = TLSConfig(Path(args.grpc_cert), Path(args.grpc_key), Path(args.grpc_root_cert) if args.grpc_root_cert else None,
                        mutual=args.grpc_mutual)
    key_file = Path(args.admin_key_file) if args.admin_key_file else key_file_for(args.model_repository)
    key = None if args.no_restrict else ensure_key(key_file)
    try:
        server = TritonServer(args.model_repository, args.grpc_port, args.http_port, args.metrics_port, args.log_file,
                              admin_key=key, tls=tls)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _check_int8_host(Path(args.model_repository))
    print(f"starting Triton on {args.model_repository} (log: {server.log_path}) ...", flush=True)
    if key:
        print(f"model-repository/shared-memory/logging/trace APIs need header cxr-admin-key (key in {key_file})")
    try:
        server.start(timeout_s=args.timeout)
    except ServerError as exc:
        print(f"error: {str(exc).splitlines()[0]} (server log: {server.log_path})", file=sys.stderr)
        return 2
    print(f"ready: gRPC :{args.grpc_port}  HTTP :{args.http_port}  metrics :{args.metrics_port}  (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0


def _check_int8_host(repository) -> None:
    """An INT8 repository says at start which CPU its answers were checked on, and whether this host is of
    the same ISA class (:func:`cxr.cpu.int8_host_note`)."""
    import json

    from cxr.cpu import describe_cpu, int8_host_note

    build = repository / "build.json"
    manifest = json.loads(build.read_text()) if build.exists() else {}
    if manifest.get("profile") != "cpu-int8":
        return
    same, message = int8_host_note(manifest.get("int8"), describe_cpu())
    print(f"{'' if same else 'WARNING: '}{message}", file=sys.stdout if same else sys.stderr, flush=True)


def _classify(args: argparse.Namespace) -> int:
    from client.classify import run

    return run(args.paths, args.url, args.json, args.concurrency)


def _evaluate(args: argparse.Namespace) -> int:
    from client.evaluate import run

    return run(args.manifest, None if args.split == "all" else args.split, args.url, args.repository, args.json)


def _build(args: argparse.Namespace) -> int:
    from export.build_repository import main

    main(["--out", args.out, "--profile", args.profile])
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from pathlib import Path

    from client.gateway.outbox import Destinations
    from client.gateway.service import DicomTLS, GatewayConfig, parse_destination, run

    if not args.destination and not args.stow:
        print("error: give --destination AET@HOST:PORT (C-STORE) and/or --stow URL (DICOMweb) for the results",
              file=sys.stderr)
        return 2
    if args.destination:
        parse_destination(args.destination)  # fail fast on a malformed destination
    if bool(args.tls_cert) != bool(args.tls_key) or ((args.tls_mutual or args.destination_tls) and not args.tls_cert):
        print("error: DICOM TLS needs --tls-cert and --tls-key together (and both for --tls-mutual / --destination-tls)",
              file=sys.stderr)
        return 2
    config = GatewayConfig(ae_title=args.ae_title, port=args.port, triton=args.triton, destination=args.destination,
                           spool=Path(args.spool), allow_ae=tuple(args.allow_ae or ()), workers=args.workers,
                           max_wait_s=args.max_wait if args.max_wait > 0 else None,
                           worklist=Destinations(hl7=args.hl7, fhir=args.fhir, webhook=args.webhook),
                           stow=args.stow,
                           tls=DicomTLS(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca) if args.tls_ca else None,
                                        mutual=args.tls_mutual, scp=True, scu=args.destination_tls)
                           if args.tls_cert else None)
    return run(config, metrics_port=args.metrics_port, web_port=args.web_port)


def _explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.explain import explain, write_png

    result = explain(Path(args.file).read_bytes(), args.method, args.target, lime_samples=args.lime_samples)
    path = write_png(result, args.out)
    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.probabilities.items(), key=lambda kv: -kv[1]))
    print(f"{args.method} for {result.label} ({top}) -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray triage on Triton Inference Server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run Triton (CPU, from the nvidia-pytriton wheel) in the foreground")
    serve.add_argument("--model-repository", default="build/model_repository")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-file", help="server log (default: a temp file)")
    serve.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    serve.add_argument("--admin-key-file", help="key for the restricted APIs (created, mode 600, if missing; "
                                                "default: admin.key beside the model repository)")
    serve.add_argument("--no-restrict", action="store_true", help="leave the admin APIs open (not recommended)")
    serve.add_argument("--grpc-cert", help="PEM server certificate: serve gRPC over TLS")
    serve.add_argument("--grpc-key", help="PEM server key")
    serve.add_argument("--grpc-root-cert", help="PEM CA that signs client certificates (mutual TLS)")
    serve.add_argument("--grpc-mutual", action="store_true", help="require client certificates")
    serve.set_defaults(func=_serve)

    classify = sub.add_parser("classify", help="triage image files (DICOM/PNG/JPEG) over gRPC")
    classify.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    classify.add_argument("--url", default="localhost:8001", help="Triton gRPC HOST:PORT")
    classify.add_argument("--json", action="store_true", help="one JSON object per image per line")
    classify.add_argument("--concurrency", type=int, default=8)
    classify.set_defaults(func=_classify)

    evaluate = sub.add_parser("evaluate", help="metrics of the shipped models on a manifest split")
    evaluate.add_argument("--manifest", action="append", default=None,
                          help="CSV in the shared manifest format (repeat for several; default: the shared cxr set)")
    evaluate.add_argument("--split", default="test", help="train/val/test or 'all'")
    evaluate.add_argument("--url", help="evaluate through the served ensemble at HOST:PORT (default: ONNX in-process)")
    evaluate.add_argument("--repository", default="build/model_repository", help="built repository (ONNX path)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    build = sub.add_parser("build-repository", help="export ONNX (parity-checked) and write the Triton repository")
    build.add_argument("--out", default="build/model_repository")
    build.add_argument("--profile", choices=("cpu", "cpu-int8", "gpu", "gpu-trt"), default="cpu")
    build.set_defaults(func=_build)

    gateway = sub.add_parser("gateway", help="DICOM gateway: Storage SCP -> spool -> Triton -> SR/SEG/SC to the PACS")
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
    gateway.set_defaults(func=_gateway)

    explain = sub.add_parser("explain", help="Grad-CAM or LIME overlay for one image (PNG)")
    explain.add_argument("file", help="DICOM, PNG or JPEG")
    explain.add_argument("--method", choices=("gradcam", "lime"), default="gradcam")
    explain.add_argument("--out", required=True, help="overlay PNG to write")
    explain.add_argument("--target", help="label to explain (default: the top finding)")
    explain.add_argument("--lime-samples", type=int, default=300)
    explain.set_defaults(func=_explain)

    # The PASSTHROUGH commands hand their arguments to their module's own parser (see main); listed for --help.
    sub.add_parser("bench", help="served vs raw ONNX Runtime vs a naive Flask server (cxr bench --help)")
    sub.add_parser("flops", help="MACs/params of every model vs the papers' tables (cxr flops --json)")
    sub.add_parser("report", help="train/evaluate the papers' classifiers, write a Markdown table (cxr report --help)")
    sub.add_parser("backfill", help="triage past studies found by QIDO-RS / fetched by WADO-RS (cxr backfill --help)")
    sub.add_parser("models", help="publish/gate/promote/roll back model releases (cxr models --help)")
    sub.add_parser("thresholds", help="fit triage thresholds (cxr thresholds fit --help) and the safety gate (cxr thresholds gate --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        result = importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:])
        return result if isinstance(result, int) else 0  # `cxr models` returns its exit status
    args = build_parser().parse_args(argv)
    if getattr(args, "manifest", "unset") is None:
        from training.data.manifest import DEFAULT_MANIFEST

        args.manifest = [str(DEFAULT_MANIFEST)]
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
