"""Train a lung segmentation U-Net (MANet stage 1): Dice + BCE loss, Adam, shift/scale/rotate augmentation.

    python -m training.train_segmenter --config training/configs/lung_unet_mobilenetv2_distilled.yaml [--ship]

Writes ``runs/seg-*/`` (metrics.json, loss/IoU plot, best weights); ``--ship`` copies the best
weights to ``weights/`` where export reads them. Selection uses the val split; test is reported.
A config's ``input_size`` trains and scores at another resolution (experiments; ``--ship`` refuses it).
A config's ``pseudo_labels`` / ``teacher`` / ``teacher_weights`` add unlabelled train images with the teacher's
cleaned masks as targets (distillation: ``lung_unet_mobilenetv2_distilled.yaml``, the served segmenter).
"""
from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from cxr.lungmask import postprocess_mask
from cxr.specs import LUNG_SEGMENTATION, ModelSpec
from training.common import (
    REPO, experiment_spec, load_weights, plot_curves, refuse_unservable_ship, save_weights, start_run,
)
from training.config import TrainConfig
from training.data.datasets import CachedImages, SegmentationDataset
from training.data.manifest import evenly, read_manifest, read_manifests
from training.loop import train_epoch
from training.metrics import segmentation_report
from training.models import create_model


@torch.no_grad()
def predict_masks(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16, postprocess: bool = True,
    out_size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Binary masks ``(H, W)`` uint8 for normalised images ``(N, 1, H, W)``.

    ``postprocess=False`` gives the raw thresholded mask, which is what the served classifier receives.
    ``out_size`` resizes the logits (bilinear) before the threshold: masks on another grid than the input's.
    """
    model.eval()
    device = next(model.parameters()).device
    masks = []
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size].to(device))
        if out_size is not None:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        raw = (logits > 0).cpu().numpy().astype(np.uint8)
        masks.extend(postprocess_mask(m[0]) if postprocess else m[0] for m in raw)
    return masks


def teacher_labelled(cfg: TrainConfig, spec: ModelSpec, manifests: list, limit: int | None = None) -> SegmentationDataset:
    """Distillation data: up to ``cfg.pseudo_labels`` train images of each manifest that have no lung mask
    (taken evenly), each with the teacher's post-processed mask (at most two lungs, holes filled) as target.
    The student learns from the teacher what a clean mask of the unlabelled films is (issue 19)."""
    records = [r for m in manifests for r in evenly([r for r in read_manifest(m, "train") if r.mask is None],
                                                  cfg.pseudo_labels)][:limit]
    teacher = create_model(cfg.teacher)
    load_weights(teacher, REPO / cfg.teacher_weights)
    cache = CachedImages(records, spec, desc="decode teacher")
    masks = predict_masks(teacher, torch.stack([torch.from_numpy(cache.prepare.normalise(x)) for x in cache.images]))
    print(f"teacher {cfg.teacher}: masks for {len(records)} unlabelled train images", flush=True)
    return SegmentationDataset(records, spec, augment=True, masks=masks)


def evaluate(model: torch.nn.Module, dataset: SegmentationDataset) -> dict:
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return segmentation_report(predict_masks(model, images), dataset.masks)


def main(argv: list[str] | None = None) -> dict:
    run = start_run("seg", __doc__, "training/configs/lung_resunet18.yaml", argv, cuda=True)
    args, cfg, epochs, generator, out = run.args, run.config, run.epochs, run.generator, run.out
    spec = experiment_spec(LUNG_SEGMENTATION, cfg)
    refuse_unservable_ship(args.ship, spec, spec.weights, LUNG_SEGMENTATION)

    def with_masks(split: str) -> list:
        return [r for r in read_manifests(args.manifest, split) if r.mask is not None][: args.limit]

    train = SegmentationDataset(with_masks("train"), spec, augment=True)
    if cfg.pseudo_labels:
        train = ConcatDataset([train, teacher_labelled(cfg, spec, args.manifest, args.limit)])
    val = SegmentationDataset(with_masks("val"), spec)
    device = torch.device(args.device)
    workers = cfg.workers  # augmentation runs in worker processes; worth it on a many-core GPU host
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    model = create_model(cfg.model)
    if cfg.init_from:  # continue from earlier weights (a second, low-LR stage of the recipe)
        load_weights(model, REPO / cfg.init_from)
    # NHWC: oneDNN's convolutions run a training step ~1.3x faster on this CPU (1.0-1.3 s vs 1.3-1.8 s, batch 8).
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=epochs * len(loader))
    dice_loss = smp.losses.DiceLoss("binary", from_logits=True)
    bce_loss = torch.nn.BCEWithLogitsLoss()

    history, best = [], -1.0
    def loss_of(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(image.contiguous(memory_format=torch.channels_last)).float()
        return dice_loss(logits, mask) + bce_loss(logits, mask)

    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, loader, loss_of, optimizer, scheduler, f"seg epoch {epoch}/{epochs}")
        scores = evaluate(model, val)
        history.append({"epoch": epoch, "train_loss": loss, "val_iou": scores["iou"], "val_dice": scores["dice"]})
        print(history[-1], flush=True)
        if scores["iou"] > best:
            best = scores["iou"]
            save_weights(model, out / spec.weights, {"model": cfg.model, "epoch": epoch, "val_iou": best, "config": cfg.to_dict()})
        plot_curves(history, ["train_loss", "val_iou"], out / "curves.png", f"{cfg.model} training")

    load_weights(model, out / spec.weights)
    test = SegmentationDataset(with_masks("test"), spec)
    metrics = {"model": cfg.model, "config": cfg.to_dict(), "epochs": epochs, "input_size": list(spec.input_size),
               "history": history, "val": evaluate(model, val), "test": evaluate(model, test)}
    print("test", metrics["test"], "->", out, flush=True)
    return run.finish(metrics, spec.weights)


if __name__ == "__main__":
    main()
