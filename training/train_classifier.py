"""Train the mask-attention classifier on lung masks predicted by the shipped segmenter.

    python -m training.train_classifier --config training/configs/mobilenetv2_mdconv_ma.yaml [--ship]

The classifier sees exactly what it sees when served: images from :mod:`cxr.preprocess` and the
segmenter's raw thresholded mask. Writes ``runs/cls-*/`` (metrics.json, curves, confusion matrix, ROC).
"""
from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxr.labels import LABELS
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION
from training.common import (
    WEIGHTS_DIR, experiment_spec, load_weights, plot_curves, refuse_unservable_ship, save_weights, start_run,
)
from training.data.datasets import CachedImages, ClassificationDataset
from training.data.manifest import Record, read_manifest
from training.layers.moex import moex_loss
from training.metrics import classification_report
from training.models import create_model
from training.plots import plot_confusion, plot_roc
from training.train_segmenter import predict_masks


def segment(records: list[Record], segmenter: torch.nn.Module) -> list[np.ndarray]:
    """Raw thresholded lung masks from ``segmenter`` (as served), at the segmenter's input size."""
    cache = CachedImages(records, LUNG_SEGMENTATION, desc="segment")
    images = torch.from_numpy(np.stack([cache.prepare.normalise(x) for x in cache.images]))
    return predict_masks(segmenter, images, postprocess=False)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: ClassificationDataset, batch_size: int = 32) -> np.ndarray:
    model.eval()
    probs = []
    for image, mask, _ in DataLoader(dataset, batch_size=batch_size):
        probs.append(torch.softmax(forward(model, image, mask), dim=1).numpy())
    return np.concatenate(probs)


def forward(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits; the lung mask goes only to models with mask attention."""
    return model(image, mask) if getattr(model, "uses_mask", False) else model(image)


def main(argv: list[str] | None = None) -> dict:
    run = start_run("cls", __doc__, "training/configs/mobilenetv2_mdconv_ma.yaml", argv)
    args, cfg, epochs, generator, out = run.args, run.config, run.epochs, run.generator, run.out
    # Other registered classifiers (``cxr report``) train with the same recipe, optionally at another size.
    spec = experiment_spec(CLASSIFIER, cfg)
    weights_name = spec.weights if cfg["model"] == CLASSIFIER.name else f"{cfg['model']}.pt"
    refuse_unservable_ship(args.ship, spec, weights_name, CLASSIFIER)

    segmenter = create_model(cfg["segmenter"])
    load_weights(segmenter, WEIGHTS_DIR / LUNG_SEGMENTATION.weights)
    splits = {}
    for split in ("train", "val", "test"):
        records = read_manifest(args.manifest, split)[: args.limit]
        splits[split] = ClassificationDataset(records, spec, segment(records, segmenter), augment=split == "train")
    loader = DataLoader(splits["train"], batch_size=cfg["batch_size"], shuffle=True, generator=generator, drop_last=True)

    model = create_model(cfg["model"], num_classes=len(LABELS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=epochs * len(loader))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    history, best = [], -1.0
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for image, mask, target in tqdm(loader, desc=f"cls epoch {epoch}/{epochs}"):
            if hasattr(model, "moex") and torch.rand(1, generator=generator).item() < cfg.get("moex_p", 0.0):
                perm = torch.randperm(len(image), generator=generator)  # MoEx (SEME models)
                with model.moex.exchange(perm):
                    loss = moex_loss(forward(model, image, mask), target, perm, cfg["moex_lambda"])
            else:
                loss = criterion(forward(model, image, mask), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = classification_report(splits["val"].targets, predict(model, splits["val"]), LABELS)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]})
        print(history[-1], flush=True)
        if val["macro_f1"] > best:
            best = val["macro_f1"]
            save_weights(model, out / weights_name, {"model": cfg["model"], "epoch": epoch, "val_macro_f1": best, "config": cfg})
        plot_curves(history, ["train_loss", "val_accuracy", "val_macro_f1"], out / "curves.png", f"{cfg['model']} training")

    load_weights(model, out / weights_name)
    metrics = {"model": cfg["model"], "config": cfg, "epochs": epochs, "history": history, "run_dir": str(out)}
    for split in ("val", "test"):
        probs = predict(model, splits[split])
        metrics[split] = classification_report(splits[split].targets, probs, LABELS)
        plot_confusion(metrics[split]["confusion_matrix"], list(LABELS), out / f"confusion_{split}.png", f"{cfg['model']} ({split})")
        plot_roc(np.asarray(splits[split].targets), probs, list(LABELS), out / f"roc_{split}.png", f"{cfg['model']} ({split})")
    print("test accuracy", metrics["test"]["accuracy"], "macro-F1", metrics["test"]["macro_f1"], "->", out, flush=True)
    return run.finish(metrics, weights_name)


if __name__ == "__main__":
    main()
