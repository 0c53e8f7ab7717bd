"""How much of the classifier's Grad-CAM evidence lies on the lungs, over a split.

    python -m training.explain_lungs --manifest ../shared/data/cxr/manifest.csv --split val [--classifier FILE] [--json]

A classifier that reads a CXR's findings should weigh the lungs above their share of the frame; one that has
learnt the source of its images (publication text, markers, borders: the covid caveat in the data's README) puts
its evidence elsewhere. For each image (its own predicted label): ``share`` = the Grad-CAM mass inside the shipped
segmenter's lung mask over all of it, against ``lung_fraction`` = the mask's share of the frame. Reported, per
label and pooled: the mean of each and the fraction of images whose share exceeds their lung fraction.
``--classifier`` measures a candidate's weights file (the shipped segmenter gives the lungs either way). Measured
so far on the cxr set (512 px, letterboxed), not on kermany224's squashed squares; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr.specs import CLASSIFIER
from training.data.manifest import evenly, read_manifests
from training.explain import explain, load_models


def lung_evidence(manifests: list[str], split: str, classifier: str | Path | None = None, limit: int | None = None) -> dict:
    models = load_models(classifier_weights=classifier)
    rows = []
    for record in tqdm(evenly(read_manifests(manifests, split), limit), desc="grad-cam"):
        result = explain(record.image.read_bytes(), "gradcam", models=models)
        total = float(result.heatmap.sum())
        if total > 0:  # an all-zero map (no positive evidence) has no share
            rows.append((record.label, float(result.heatmap[result.lung_mask].sum()) / total, float(result.lung_mask.mean())))

    def summary(selected: list[tuple[str, float, float]]) -> dict:
        share, fraction = np.array([r[1] for r in selected]), np.array([r[2] for r in selected])
        return {"n": len(selected), "mean_share": float(share.mean()), "mean_lung_fraction": float(fraction.mean()),
                "lung_weighted": float((share > fraction).mean())}

    return {"split": split, "manifests": manifests, "classifier": str(classifier or Path("weights") / CLASSIFIER.weights),
            "pooled": summary(rows),
            "by_label": {label: summary([r for r in rows if r[0] == label]) for label in sorted({r[0] for r in rows})}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", action="append", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--classifier", default=None, help="a candidate classifier's weights file (default: the shipped one)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images, spread over the sources")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = lung_evidence(args.manifest, args.split, args.classifier, args.limit)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, s in [("pooled", result["pooled"]), *result["by_label"].items()]:
            print(f"{name:<10} n={s['n']:<4} Grad-CAM share on the lungs {s['mean_share']:.3f} "
                  f"(lung fraction {s['mean_lung_fraction']:.3f}), lung-weighted on {s['lung_weighted']:.0%} of images")
    return result


if __name__ == "__main__":
    main()
