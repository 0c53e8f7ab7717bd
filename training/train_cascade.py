"""Train Cascade-SEMEnet stage 2 (SEME-DenseNet169): covid vs other viral, on lung-only images.

    python -m training.train_cascade --config training/configs/seme_resnet18_slim.yaml [--ship]

Inputs are built by :func:`cxr.cascade.stage2_input` from the served preprocessing and the shipped
segmenter's post-processed mask, exactly as ``triage_router`` builds them. Training uses MoEx (moment
exchange after the first convolution, interpolated loss), CLAHE on a random share of images and light
shift/scale/rotate. Writes ``runs/cascade-*/`` (metrics.json, curves); ``--ship`` copies to ``weights/``.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from cxr.cascade import stage2_input
from cxr.lungmask import postprocess_mask
from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, COVID_STAGE2, LUNG_SEGMENTATION
from training.common import experiment_spec, load_weights, plot_curves, refuse_unservable_ship, save_weights, start_run
from training.data.manifest import Record, read_manifests
from training.layers.moex import moex_loss
from training.loop import train_epoch
from training.metrics import classification_report
from training.models import create_model
from training.serving_graph import serving_graph

VIRAL_LABELS = {"viral": 0, "covid": 1}


@torch.no_grad()
def stage2_arrays(records: list[Record], segmenter: torch.nn.Module) -> np.ndarray:
    """Stage-2 inputs ``(N, 1, h, w)`` for ``records``, built as the router builds them (shipped segmenter)."""
    out = []
    for record in tqdm(records, desc="stage-2 inputs", leave=False):
        seg_in, cls_in = prepare_bytes(record.image.read_bytes(), (LUNG_SEGMENTATION, CLASSIFIER))
        raw = segmenter(torch.from_numpy(seg_in[None]))[0, 0].numpy()
        out.append(stage2_input(cls_in, postprocess_mask(raw)))
    return np.stack(out)


def augmenter(clahe_p: float) -> A.Compose:
    return A.Compose([
        A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=clahe_p),
        A.Affine(translate_percent=(-0.05, 0.05), scale=(0.92, 1.08), rotate=(-8, 8),
                 border_mode=cv2.BORDER_CONSTANT, p=0.8),
    ])


def augment(batch: torch.Tensor, transform: A.Compose) -> torch.Tensor:
    """Augment normalised images through uint8 (CLAHE works on 8-bit images)."""
    spec = COVID_STAGE2
    out = []
    for x in batch.numpy():
        unit = np.clip(x[0] * spec.std + spec.mean, 0, 1)
        image = transform(image=(unit * 255).astype(np.uint8))["image"].astype(np.float32) / 255
        out.append(((image - spec.mean) / spec.std)[None])
    return torch.from_numpy(np.stack(out).astype(np.float32))


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> np.ndarray:
    model.eval()
    return np.concatenate([torch.softmax(model(torch.from_numpy(x[i : i + batch])), 1).numpy()
                           for i in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> dict:
    run = start_run("cascade", __doc__, "training/configs/seme_resnet18_slim.yaml", argv)
    args, cfg, epochs, generator, out = run.args, run.config, run.epochs, run.generator, run.out
    refuse_unservable_ship(args.ship, experiment_spec(COVID_STAGE2, cfg), COVID_STAGE2.weights, COVID_STAGE2)
    segmenter = serving_graph(LUNG_SEGMENTATION)

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [r for r in read_manifests(args.manifest, name) if r.label in VIRAL_LABELS][: args.limit]
        return stage2_arrays(rows, segmenter), np.array([VIRAL_LABELS[r.label] for r in rows])

    (x_train, y_train), (x_val, y_val) = split("train"), split("val")
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                        batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=True)
    model = create_model(cfg.model, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=epochs * len(loader))
    transform = augmenter(cfg.clahe_p)
    labels = list(COVID_STAGE2.labels)
    history, best = [], -1.0
    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = augment(x, transform)
        if torch.rand(1, generator=generator).item() < cfg.moex_p:
            perm = torch.randperm(len(x), generator=generator)
            with model.moex.exchange(perm):
                return moex_loss(model(x), y, perm, cfg.moex_lambda)
        return torch.nn.functional.cross_entropy(model(x), y)

    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, loader, loss_of, optimizer, scheduler, f"cascade epoch {epoch}/{epochs}")
        val = classification_report(y_val, predict(model, x_val), labels)
        history.append({"epoch": epoch, "train_loss": loss, "val_accuracy": val["accuracy"],
                        "val_auc": val["per_class"]["covid"]["auc"]})
        print(history[-1], flush=True)
        score = val["per_class"]["covid"]["auc"] or 0.0
        if score > best:
            best = score
            save_weights(model, out / COVID_STAGE2.weights, {"model": cfg.model, "epoch": epoch, "val_auc": best, "config": cfg.to_dict()})
        plot_curves(history, ["train_loss", "val_accuracy"], out / "curves.png", f"{cfg.model} (stage 2)")

    load_weights(model, out / COVID_STAGE2.weights)
    x_test, y_test = split("test")
    metrics = {"model": cfg.model, "config": cfg.to_dict(), "epochs": epochs, "history": history,
               "val": classification_report(y_val, predict(model, x_val), labels),
               "test": classification_report(y_test, predict(model, x_test), labels)}
    print("test", {k: metrics["test"][k] for k in ("accuracy", "macro_f1")}, "->", out, flush=True)
    return run.finish(metrics, COVID_STAGE2.weights)


if __name__ == "__main__":
    main()
