"""Join separately trained classifiers into one served ensemble and say, on val, whether it beats its members.

    python -m training.ensemble --model mobilenetv2_mdconv_resnet18_half \\
        --member mobilenetv2_mdconv=weights/mobilenetv2_mdconv.pt --member resnet18_half=runs/cls-.../resnet18_half.pt \\
        [--manifest A --manifest B] [--ship]

Every member's weights are loaded into the registered ensemble (:mod:`training.models.ensemble`); one pass over
val and test gives each member's logits and their mean (what the ensemble graph computes). One temperature is
fitted on val for the mean (:mod:`training.calibration`). ``metrics.json`` holds, per split, the report of every
member (at the temperature its trainer fitted) and of the ensemble (pooled and per cohort, as the trainer writes),
and ``val_choice``: whichever of them has the best val macro-F1. Test is reported beside it and plays no part in
the choice. ``--ship`` copies the ensemble's weights and metrics to ``weights/``, and only when the ensemble is
val's choice.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np

from cxr.labels import LABELS
from cxr.specs import CLASSIFIER
from training.calibration import fit_temperature
from training.common import WEIGHTS_DIR, load_weights, run_dir, save_weights, write_json
from training.data.datasets import ClassificationDataset
from training.data.manifest import DEFAULT_MANIFEST, KERMANY224_MANIFEST, evenly, read_manifests, resolve_manifest
from training.models import create_model
from training.models.ensemble import ClassifierEnsemble
from training.train_classifier import calibrated_report, empty_masks, predict_logits


def parse_members(ensemble: ClassifierEnsemble, given: list[str]) -> dict[str, Path]:
    """``KEY=WEIGHTS`` flags -> ``{key: path}``, exactly one per member of ``ensemble``."""
    pairs = [item.split("=", 1) for item in given]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--member takes KEY=WEIGHTS; got {[g for g, p in zip(given, pairs) if len(p) != 2]}")
    names = [name for name, _ in pairs]
    if sorted(names) != sorted(ensemble.members):
        raise SystemExit(f"the ensemble has members {sorted(ensemble.members)}; --member gave {names}")
    return {name: Path(path) for name, path in pairs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered ensemble (training.models.ensemble)")
    parser.add_argument("--member", action="append", required=True, metavar="KEY=WEIGHTS",
                        help="a member's key in the ensemble and its weights file (repeat, one per member)")
    parser.add_argument("--manifest", action="append", help="manifest CSV (repeat); default: cxr + kermany224")
    parser.add_argument("--limit", type=int, help="use only N images per split (smoke runs; not with --ship)")
    parser.add_argument("--ship", action="store_true",
                        help="copy the ensemble's weights and metrics to weights/ (refused unless it is best on val)")
    args = parser.parse_args(argv)
    if args.ship and args.limit:
        raise SystemExit("--ship refused with --limit: the temperature would be fitted on a sample of val")
    manifests = [resolve_manifest(m) for m in (args.manifest or [DEFAULT_MANIFEST, KERMANY224_MANIFEST])]

    ensemble = create_model(args.model, num_classes=len(LABELS))
    if not isinstance(ensemble, ClassifierEnsemble):
        raise SystemExit(f"--model {args.model} is not an ensemble (training.models.ensemble)")
    members, temperatures = {}, {}
    for name, path in parse_members(ensemble, args.member).items():
        meta = load_weights(ensemble.members[name], path)
        expected = ensemble.architectures[name]  # e.g. resnet18 and resnet18_half share every parameter name
        if meta.get("model") != expected:
            raise SystemExit(f"--member {name}={path}: that file holds {meta.get('model')!r} weights, not {expected!r}")
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        members[name] = {"weights": str(path), "sha256": digest, "epoch": meta.get("epoch"),
                         "val_macro_f1_at_training": meta.get("val_macro_f1"), "config": meta.get("config")}
        temperatures[name] = meta.get("temperature", 1.0)

    started = time.perf_counter()
    splits, logits = {}, {}
    for split in ("val", "test"):
        records = evenly(read_manifests(manifests, split), args.limit)
        splits[split] = ClassificationDataset(records, CLASSIFIER, empty_masks(records))  # no member reads a mask
        logits[split] = {name: predict_logits(m, splits[split]) for name, m in ensemble.members.items()}
        logits[split][args.model] = np.mean(list(logits[split].values()), axis=0)  # what the ensemble graph computes
    temperature = fit_temperature(logits["val"][args.model], splits["val"].targets)
    temperatures[args.model] = temperature

    metrics = {"model": args.model, "members": members, "manifests": [str(m) for m in manifests],
               "temperature": temperature, "config": {"model": args.model, "members": args.member}, "epochs": None}
    for split in ("val", "test"):
        candidates = {name: calibrated_report(splits[split], z, temperatures[name]) for name, z in logits[split].items()}
        metrics[split] = {**candidates[args.model], "candidates": candidates}  # each at its own temperature
    metrics["val_choice"] = max(logits["val"], key=lambda name: metrics["val"]["candidates"][name]["macro_f1"])
    metrics["seconds"] = round(time.perf_counter() - started)

    out = run_dir("ens")
    metrics["run_dir"] = str(out)
    weights_name = f"{args.model}.pt"
    save_weights(ensemble, out / weights_name, {"model": args.model, "members": members, "temperature": temperature,
                                                "val_macro_f1": metrics["val"]["macro_f1"]})
    write_json(out / "metrics.json", metrics)
    for name in logits["val"]:
        v, t = metrics["val"]["candidates"][name], metrics["test"]["candidates"][name]
        auc = "n/a" if v["abnormal_auc"] is None else f"{v['abnormal_auc']:.4f}"
        print(f"{name:40s} val macro-F1 {v['macro_f1']:.4f} acc {v['accuracy']:.4f} AUC {auc} | "
              f"test macro-F1 {t['macro_f1']:.4f}", flush=True)
    print(f"best on val: {metrics['val_choice']}; ensemble temperature {temperature:.3f} -> {out}", flush=True)
    if args.ship:
        if metrics["val_choice"] != args.model:
            raise SystemExit(f"--ship refused: {metrics['val_choice']} beats the ensemble on val ({out})")
        shutil.copy(out / weights_name, WEIGHTS_DIR / weights_name)
        write_json(WEIGHTS_DIR / f"{args.model}.metrics.json",
                   {k: metrics[k] for k in ("model", "members", "temperature", "val", "test", "config")})
    return metrics


if __name__ == "__main__":
    main()
