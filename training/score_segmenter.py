"""Score segmenter weights at any input size: on their own grid and resized to the served grid.

    python -m training.score_segmenter runs/seg-*/lung_resunet18.pt --input-size 384 [--split test]

Weights trained at another resolution (``input_size`` in a config) are scored on their own grid by the
trainer; this also resizes their logits (bilinear) to the served spec's grid and scores them against the
masks at that size, which is what serving them at the served size's output would give. Post-processed
masks, as ``training.train_segmenter.evaluate``.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from cxr.lungmask import read_mask
from cxr.specs import LUNG_SEGMENTATION
from training.common import load_weights
from training.data.datasets import SegmentationDataset
from training.data.manifest import DEFAULT_MANIFEST, read_manifest
from training.metrics import segmentation_report
from training.models import create_model
from training.train_segmenter import predict_masks


def score(weights: str, input_size: int, split: str = "test", model_name: str = LUNG_SEGMENTATION.name,
          manifest: str = str(DEFAULT_MANIFEST), limit: int | None = None) -> dict:
    """``{"own_grid": report, "served_grid": report, ...}`` (IoU/Dice reports of ``segmentation_report``)."""
    records = [r for r in read_manifest(manifest, split) if r.mask is not None][:limit]
    data = SegmentationDataset(records, replace(LUNG_SEGMENTATION, input_size=(input_size, input_size)))
    model = create_model(model_name)
    load_weights(model, weights)
    images = torch.stack([data[i][0] for i in range(len(data))])
    served = LUNG_SEGMENTATION.input_size
    served_masks = [read_mask(r.mask, served) for r in data.records]
    return {"weights": str(weights), "split": split, "input_size": input_size, "served_size": list(served),
            "own_grid": segmentation_report(predict_masks(model, images), data.masks),
            "served_grid": segmentation_report(predict_masks(model, images, out_size=served), served_masks)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--input-size", type=int, default=LUNG_SEGMENTATION.input_size[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=LUNG_SEGMENTATION.name)
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = score(args.weights, args.input_size, args.split, args.model, args.manifest)
    for grid in ("own_grid", "served_grid"):
        print(f"{args.split} {grid}: IoU {result[grid]['iou']:.4f}  Dice {result[grid]['dice']:.4f}  (n={result[grid]['n']})")
    return result


if __name__ == "__main__":
    main()
