"""``cxr models status|publish|thresholds|promote|rollback|shadow``: releases (:mod:`export.release`), publishing
behind gates (:mod:`export.publish`) and rollout on a running server (:mod:`ops.rollout`).

``publish`` exports ONNX from PyTorch weights and evaluates them: it needs the training stack, which the gateway
image (deploy/docker) does not install, so :mod:`export.publish` is imported only when that subcommand runs."""
from __future__ import annotations

import argparse
import json

from cxr.admin_key import find_key
from export import release
from cxr.release_record import load_state
from export.release import PUBLISHABLE, publish_thresholds
from ops.admin import TritonAdmin
from ops.rollout import Rollout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr models", description=release.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/model_repository")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="releases, their gates and which one serves")
    publish_cmd = sub.add_parser("publish", help="export + gate a new model version; a new release if it passes")
    publish_cmd.add_argument("model", choices=PUBLISHABLE)
    publish_cmd.add_argument("--weights", required=True, help="trained weights (.pt) for the model")
    publish_cmd.add_argument("--tolerance", type=float, default=0.01, help="allowed drop of IoU / macro-F1")
    publish_cmd.add_argument("--latency-factor", type=float, default=1.5, help="allowed batch-1 latency ratio")
    publish_cmd.add_argument("--manifest", help="CSV in the shared manifest format (default: the shared data)")
    thresholds_cmd = sub.add_parser("thresholds", help="a new site thresholds file as a release of its own")
    thresholds_cmd.add_argument("file")
    for name, text in (("promote", "serve a release (default: the newest)"), ("rollback", "serve the previous release"),
                       ("shadow", "also send a fraction of studies to a candidate classifier version")):
        cmd = sub.add_parser(name, help=text)
        if name == "promote":
            cmd.add_argument("release", nargs="?", type=int)
        if name == "shadow":
            cmd.add_argument("version", type=int, help="cxr_classifier version (see cxr models status)")
            cmd.add_argument("--fraction", type=float, default=0.1, help="share of studies (0 stops shadowing)")
        cmd.add_argument("--url", action="append", help="Triton HTTP HOST:PORT (default localhost:8000); repeat "
                                                         "for every replica behind one load balancer")
        cmd.add_argument("--admin-key-file", help="the key `cxr serve` wrote (default: $CXR_ADMIN_KEY, else "
                                                  "admin.key beside --repository)")
    args = parser.parse_args(argv)
    if args.command == "status":
        state = load_state(args.repository)
        for number, record in sorted(state["releases"].items(), key=lambda kv: int(kv[0])):
            failed = [g["name"] for g in record.get("gates", []) if not g["passed"]]
            print(f"release {number:>3}  {record['status']:<9} {record.get('note', ''):<28} "
                  f"thresholds {record['thresholds_version']}  models {record['models']}"
                  + (f"  failed gates: {failed}" if failed else ""))
    elif args.command == "publish":
        from export.publish import publish  # the training stack (see the module docstring)

        result = publish(args.repository, args.model, args.weights, tolerance=args.tolerance,
                         latency_factor=args.latency_factor, manifest=args.manifest)
        for gate in result["gates"]:
            print(f"gate {gate['name']:<8} {'pass' if gate['passed'] else 'FAIL'}  {gate['detail']}")
        if result["release"] is None:
            print(f"{args.model} v{result['version']} rejected: the serving release is unchanged")
            return 1
        print(f"{args.model} v{result['version']} published as release {result['release']} (cxr models promote)")
    elif args.command == "thresholds":
        print(f"release {publish_thresholds(args.repository, args.file)} published (cxr models promote)")
    else:
        key = find_key(args.repository, args.admin_key_file)
        rollout = Rollout(args.repository, [TritonAdmin(url, key) for url in args.url or ["localhost:8000"]])
        if args.command == "shadow":
            result = rollout.shadow(args.version, args.fraction)
        else:
            result = rollout.promote(args.release) if args.command == "promote" else rollout.rollback()
        print(json.dumps(result))
    return 0
