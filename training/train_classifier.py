"""Train a first-stage classifier; a mask-attention one on lung masks predicted by the shipped segmenter.

    python -m training.train_classifier --config training/configs/mobilenetv2_mdconv.yaml [--ship]
        [--manifest A --manifest B] [--resume runs/cls-...]

The classifier sees exactly what it sees when served: images from :mod:`cxr.preprocess` and, with mask
attention, the segmenter's raw thresholded mask (a model without it gets empty masks it never reads). Training checkpoints every epoch (``checkpoint.pt``: model, EMA,
optimizer, schedule, history, random state) so ``--resume`` continues a stopped run where it was; the
config's ``patience`` stops early when val macro-F1 has not improved for that many epochs. The best
checkpoint (by val macro-F1; each epoch the better on val of the trained weights and, when ``ema_decay`` is
set, their EMA) gets a temperature fitted on
val (:mod:`training.calibration`), stored with the weights. Writes ``runs/cls-*/`` (metrics.json with
wall-clock seconds, per-cohort val/test metrics, calibration before/after; curves, confusion matrix, ROC).
"""
from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.special import softmax
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from cxr.labels import LABELS
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION
from training.calibration import fit_temperature
from training import loop
from training.config import TrainConfig
from training.common import (
    REPO, WEIGHTS_DIR, experiment_spec, load_weights, plot_curves, refuse_unservable_ship, save_weights, start_run,
)
from training.data.datasets import CachedImages, ClassificationDataset, label_balanced_sampler
from training.data.manifest import Record, evenly, read_manifests
from training.layers.moex import moex_loss
from training.metrics import abnormal_auc, calibration_bins, classification_report
from training.models import create_model
from training.plots import plot_confusion, plot_reliability, plot_roc
from training.train_segmenter import predict_masks

MASK_CACHE = REPO / "runs" / "mask-cache"


def segment(records: list[Record], segmenter: torch.nn.Module, weights: Path | None = None) -> list[np.ndarray]:
    """Raw thresholded lung masks from ``segmenter`` (as served), at the segmenter's input size.

    With ``weights`` (the segmenter's file) the masks are cached under ``runs/mask-cache``, keyed by the
    weights' and images' paths and contents' identity, so a resumed run or another seed does not segment again.
    """
    cache_file = None
    if weights is not None:
        key = hashlib.sha256(Path(weights).read_bytes())
        for r in records:
            key.update(f"{r.image}:{r.image.stat().st_size}:{r.image.stat().st_mtime_ns}\n".encode())
        cache_file = MASK_CACHE / f"{key.hexdigest()[:20]}.npz"
        if cache_file.exists():
            with np.load(cache_file) as saved:
                return list(np.unpackbits(saved["masks"], axis=-1)[..., : int(saved["width"])])
    cache = CachedImages(records, LUNG_SEGMENTATION, desc="segment")
    masks = []
    for start in range(0, len(cache.images), 256):  # bounded memory: normalised float copies of 256 images at a time
        chunk = torch.from_numpy(np.stack([cache.prepare.normalise(x) for x in cache.images[start : start + 256]]))
        masks.extend(predict_masks(segmenter, chunk, postprocess=False))
    if cache_file is not None and masks:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache_file, masks=np.packbits(np.stack(masks), axis=-1), width=masks[0].shape[-1])
    return masks


def empty_masks(records: list) -> list[np.ndarray]:
    """Masks for a classifier without mask attention, which never reads them."""
    return [np.zeros(LUNG_SEGMENTATION.input_size, np.uint8)] * len(records)


def masks_for(cfg: TrainConfig) -> Callable[[list], list[np.ndarray]]:
    """``records -> lung masks`` for this recipe: its segmenter's (own weights file) for a mask-attention model;
    empty ones for a model without (segmenting thousands of images it never reads would cost minutes)."""
    segmenter = create_model(cfg.segmenter)  # built either way: a seed's later random draws stay what they were
    with torch.random.fork_rng():
        uses_mask = getattr(create_model(cfg.model, num_classes=len(LABELS)), "uses_mask", False)
    if not uses_mask:
        return empty_masks
    segmenter_weights = WEIGHTS_DIR / f"{cfg.segmenter}.pt"
    load_weights(segmenter, segmenter_weights)
    return lambda records: segment(records, segmenter, segmenter_weights)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset: ClassificationDataset, batch_size: int = 32) -> np.ndarray:
    model.eval()
    logits = [forward(model, image, mask).float().numpy() for image, mask, _ in DataLoader(dataset, batch_size=batch_size)]
    return np.concatenate(logits)


def forward(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits; the lung mask goes only to models with mask attention."""
    image = image.contiguous(memory_format=torch.channels_last)
    return model(image, mask) if getattr(model, "uses_mask", False) else model(image)


def split_report(dataset: ClassificationDataset, probs: np.ndarray) -> dict:
    """Pooled metrics (with normal-vs-abnormal AUC) plus the same per cohort (``cohen``, ``kermany``, ``kermany224``)."""
    report = {**classification_report(dataset.targets, probs, LABELS),
              "abnormal_auc": abnormal_auc(dataset.targets, probs)}
    cohorts = np.array([r.cohort for r in dataset.records])
    report["by_cohort"] = {
        c: classification_report(np.asarray(dataset.targets)[cohorts == c], probs[cohorts == c], LABELS)
        for c in sorted(set(cohorts))
    }
    return report


def calibrated_report(dataset: ClassificationDataset, logits: np.ndarray, temperature: float) -> dict:
    """:func:`split_report` of the probabilities at ``temperature``, with ECE before (T = 1) and after."""
    probs = softmax(logits / temperature, axis=1)
    before = calibration_bins(dataset.targets, softmax(logits, axis=1))
    return {**split_report(dataset, probs),
            "calibration": {"uncalibrated": before["ece"], **calibration_bins(dataset.targets, probs)}}


class Trainer:
    """Model, EMA copy, optimizer and schedule of one run, with the checkpoint that restores all of them."""

    def __init__(self, cfg: TrainConfig, steps: int) -> None:
        self.model = create_model(cfg.model, num_classes=len(LABELS)).to(memory_format=torch.channels_last)
        if cfg.init_from:  # fine-tune earlier weights (e.g. at a higher resolution than they were trained at)
            load_weights(self.model, REPO / cfg.init_from)
        self.ema = copy.deepcopy(self.model).eval() if cfg.ema_decay else None
        self.ema_decay = cfg.ema_decay
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, cfg.lr, total_steps=steps,
                                                             pct_start=cfg.warmup_fraction)
        self.history: list[dict] = []
        self.best, self.stale, self.seconds = -1.0, 0, 0.0

    @property
    def candidates(self) -> dict[str, torch.nn.Module]:
        """The weights validated every epoch: the trained ones and, when there is one, their EMA copy."""
        return {"raw": self.model} | ({"ema": self.ema} if self.ema is not None else {})

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA step with timm's warm-up, ``decay = min(ema_decay, (1 + t) / (10 + t))`` at step ``t``: early on the
        average follows the weights closely (a slow average of weights that still move fast, with batch-norm
        statistics averaged alongside, predicts a single class for epochs)."""
        if self.ema is None:
            return
        step = self.scheduler.last_epoch
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for e, m in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(decay).add_(m.detach(), alpha=1 - decay)
            else:
                e.copy_(m)

    def save(self, path: Path, generator: torch.Generator) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": self.history, "best": self.best,
                 "stale": self.stale, "seconds": self.seconds, "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "ema": self.ema.state_dict() if self.ema is not None else None}
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # a run stopped mid-write keeps the previous checkpoint

    def load(self, path: Path, generator: torch.Generator) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.history, self.best, self.stale, self.seconds = state["history"], state["best"], state["stale"], state["seconds"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def batch_mixer(cfg: TrainConfig) -> Mixup | None:
    """timm's Mixup / CutMix for this recipe (``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``), or None.

    Its soft targets carry the recipe's label smoothing. Image and lung mask are mixed together (one tensor, two
    channels), so a mask-attention model's mask stays the mask of the pixels it attends to."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob, switch_prob=0.5,
                 mode="batch", label_smoothing=cfg.label_smoothing, num_classes=len(LABELS))


def train_epoch(trainer: Trainer, loader: DataLoader, cfg: TrainConfig, generator: torch.Generator, desc: str) -> float:
    model = trainer.model
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mixer, soft_criterion = batch_mixer(cfg), SoftTargetCrossEntropy()
    if mixer is not None and hasattr(model, "moex"):
        raise ValueError(f"{cfg.model}: batch mixing (mixup_alpha / cutmix_alpha) and MoEx do not combine; set one")

    def logits_of(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.autocast == "bf16"):
            return forward(model, image, mask).float()

    def loss_of(image: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if mixer is not None:
            mixed, soft_target = mixer(torch.cat([image, mask], dim=1), target)
            image, mask = mixed[:, : image.shape[1]], mixed[:, image.shape[1]:]
            return soft_criterion(logits_of(image, mask), soft_target)
        if hasattr(model, "moex") and torch.rand(1, generator=generator).item() < cfg.moex_p:
            perm = torch.randperm(len(image), generator=generator)  # MoEx (SEME models)
            with model.moex.exchange(perm):
                return moex_loss(logits_of(image, mask), target, perm, cfg.moex_lambda)
        return criterion(logits_of(image, mask), target)

    return loop.train_epoch(model, loader, loss_of, trainer.optimizer, trainer.scheduler, desc, trainer.update_ema)


def main(argv: list[str] | None = None) -> dict:
    run = start_run("cls", __doc__, "training/configs/mobilenetv2_mdconv.yaml", argv, resumable=True)
    args, cfg, epochs, generator, out = run.args, run.config, run.epochs, run.generator, run.out
    # Other registered classifiers (``cxr report``) train with the same recipe, optionally at another size.
    spec = experiment_spec(CLASSIFIER, cfg)
    weights_name = spec.weights if cfg.model == CLASSIFIER.name else f"{cfg.model}.pt"
    refuse_unservable_ship(args.ship, spec, weights_name, CLASSIFIER)

    splits, lung_masks = {}, masks_for(cfg)
    for split in ("train", "val", "test"):
        records = evenly(read_manifests(args.manifest, split), args.limit)  # --limit: smoke runs see every source
        masks = lung_masks(records)
        splits[split] = ClassificationDataset(records, spec, masks, augment=split == "train",
                                              aspect_jitter=cfg.aspect_jitter, hflip_p=cfg.hflip_p)
    train = splits["train"]
    order = ({"sampler": label_balanced_sampler(train.targets, cfg.class_balance, generator)} if cfg.class_balance
             else {"shuffle": True, "generator": generator})
    loader = DataLoader(train, batch_size=cfg.batch_size, drop_last=True, **order)

    trainer = Trainer(cfg, epochs * len(loader))
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        trainer.load(checkpoint, generator)
        print(f"resumed {out} after epoch {len(trainer.history)} (best val macro-F1 {trainer.best:.4f})", flush=True)
    patience = cfg.patience
    for epoch in range(len(trainer.history) + 1, epochs + 1):
        if patience and trainer.stale >= patience:
            print(f"early stop: val macro-F1 has not improved for {patience} epochs", flush=True)
            break
        started = time.perf_counter()
        loss = train_epoch(trainer, loader, cfg, generator, f"cls epoch {epoch}/{epochs}")
        vals = {name: classification_report(splits["val"].targets, softmax(predict_logits(m, splits["val"]), axis=1),
                                            LABELS) for name, m in trainer.candidates.items()}
        chosen = max(vals, key=lambda name: vals[name]["macro_f1"])  # the better of raw and EMA weights, on val
        val = vals[chosen]
        trainer.seconds += time.perf_counter() - started
        trainer.history.append({"epoch": epoch, "train_loss": loss, "val_accuracy": val["accuracy"],
                                "val_macro_f1": val["macro_f1"], "weights": chosen,
                                **{f"val_macro_f1_{name}": v["macro_f1"] for name, v in vals.items()},
                                "seconds": round(time.perf_counter() - started, 1), "lr": trainer.scheduler.get_last_lr()[0]})
        print(trainer.history[-1], flush=True)
        if val["macro_f1"] > trainer.best:
            trainer.best, trainer.stale = val["macro_f1"], 0
            save_weights(trainer.candidates[chosen], out / weights_name,
                         {"model": cfg.model, "epoch": epoch, "weights": chosen, "val_macro_f1": trainer.best,
                          "config": cfg.to_dict()})
        else:
            trainer.stale += 1
        trainer.save(checkpoint, generator)
        plot_curves(trainer.history, ["train_loss", "val_accuracy", "val_macro_f1"], out / "curves.png",
                    f"{cfg.model} training")

    model = trainer.model  # the best epoch's chosen weights (raw or EMA) are loaded into it
    meta = load_weights(model, out / weights_name)
    logits = {split: predict_logits(model, splits[split]) for split in ("val", "test")}
    temperature = fit_temperature(logits["val"], splits["val"].targets)
    save_weights(model, out / weights_name, {**meta, "temperature": temperature})
    metrics = {"model": cfg.model, "config": cfg.to_dict(), "epochs": len(trainer.history), "history": trainer.history,
               "run_dir": str(out), "manifests": [str(m) for m in args.manifest], "train_seconds": round(trainer.seconds),
               "train_images": len(splits["train"]), "temperature": temperature}
    for split in ("val", "test"):
        metrics[split] = calibrated_report(splits[split], logits[split], temperature)
        probs = softmax(logits[split] / temperature, axis=1)
        before = calibration_bins(splits[split].targets, softmax(logits[split], axis=1))
        plot_reliability({"before (T = 1)": before, f"after (T = {temperature:.2f})": metrics[split]["calibration"]},
                         out / f"reliability_{split}.png", f"{cfg.model} ({split}), 15 bins")
        plot_confusion(metrics[split]["confusion_matrix"], list(LABELS), out / f"confusion_{split}.png", f"{cfg.model} ({split})")
        plot_roc(np.asarray(splits[split].targets), probs, list(LABELS), out / f"roc_{split}.png", f"{cfg.model} ({split})")
    print("test accuracy", metrics["test"]["accuracy"], "macro-F1", metrics["test"]["macro_f1"],
          f"temperature {temperature:.3f}, train {trainer.seconds / 60:.1f} min ->", out, flush=True)
    return run.finish(metrics, weights_name)


if __name__ == "__main__":
    main()
