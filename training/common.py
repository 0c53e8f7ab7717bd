"""Helpers shared by the training scripts: seeding, run folders, config files and plots."""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cxr.paths import REPO, WEIGHTS
from cxr.specs import ModelSpec
from training.config import TrainConfig
from training.data.manifest import DEFAULT_MANIFEST, resolve_manifest

WEIGHTS_DIR = WEIGHTS


@dataclass
class RunSetup:
    """What every training script starts from: parsed arguments, config, seeded generator, run folder."""

    args: argparse.Namespace
    config: TrainConfig
    epochs: int
    generator: torch.Generator
    out: Path

    def finish(self, metrics: dict, weights_name: str) -> dict:
        """Write ``metrics.json``; with ``--ship`` copy the best weights and their metrics to ``weights/``."""
        write_json(self.out / "metrics.json", metrics)
        if self.args.ship:
            shutil.copy(self.out / weights_name, WEIGHTS_DIR / weights_name)
            shipped = {k: metrics[k] for k in ("model", "epochs", "val", "test", "config")}
            write_json(WEIGHTS_DIR / f"{self.config.model}.metrics.json", shipped)
        return metrics


def start_run(
    kind: str, doc: str, default_config: str, argv: list[str] | None = None, cuda: bool = False,
    resumable: bool = False,
) -> RunSetup:
    """Parse the shared training flags, load the config, seed everything and create ``runs/<kind>-<time>``.

    ``cuda=True``: the script can train on a GPU and takes ``--device cuda``. ``args.manifest`` is a list:
    every ``--manifest`` given, else the config's ``manifests`` (relative to the shared data folder), else
    the shared ``cxr`` manifest. ``resumable=True``: the script checkpoints, and ``--resume DIR`` reuses that
    run folder (the script reads its checkpoint).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--manifest", action="append",
                        help="a manifest CSV (repeat for several); default: the config's `manifests`, else the cxr set")
    if resumable:
        parser.add_argument("--resume", help="continue the run in this folder from its last checkpoint")
    parser.add_argument("--epochs", type=int, help="override the config")
    parser.add_argument("--seed", type=int, help="override the config (seed-to-seed spread of a recipe)")
    parser.add_argument("--limit", type=int, help="use only N images per split (smoke runs)")
    parser.add_argument("--ship", action="store_true", help="copy the best weights to weights/")
    if cuda:
        parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16 autocast")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    args.manifest = [resolve_manifest(m) for m in (args.manifest or config.manifests or [DEFAULT_MANIFEST])]
    if args.seed is not None:
        config.seed = args.seed
    generator = seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    # Tiny Adam moments and gradients late in a schedule become denormal floats, which the CPU handles
    # in microcode at a fraction of normal speed; flushing them to zero keeps the step time flat.
    torch.set_flush_denormal(True)
    resume = getattr(args, "resume", None)
    out = Path(resume) if resume else run_dir(kind)
    if resume and not out.is_dir():
        raise SystemExit(f"--resume: no run folder {out}")
    return RunSetup(args, config, args.epochs or config.epochs, generator, out)


def experiment_spec(served: ModelSpec, config: TrainConfig) -> ModelSpec:
    """The spec a config trains: the served one with the config's ``model`` and, if set, its ``input_size``."""
    size = config.input_size
    return replace(served, name=config.model, input_size=(size, size) if size else served.input_size)


def refuse_unservable_ship(ship: bool, spec: ModelSpec, weights_name: str, served: ModelSpec) -> None:
    """``--ship`` must not put weights into the served model's file that the server cannot run as they are."""
    trained, serves = (spec.name, spec.input_size), (served.name, served.input_size)
    if ship and weights_name == served.weights and trained != serves:
        raise SystemExit(
            f"--ship refused: {weights_name} is served as {served.name} at {served.input_size}, but this run trains "
            f"{spec.name} at {spec.input_size} (change the spec in cxr/specs.py first, then re-export and re-measure)"
        )


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_config(path: str | Path) -> TrainConfig:
    """The recipe in ``path`` (raises ``ValueError`` naming an unknown or missing key)."""
    return TrainConfig.from_yaml(path)


def run_dir(kind: str, root: str | Path = REPO / "runs") -> Path:
    path = Path(root) / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def save_weights(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Save a float16 state dict (halves the shipped size) with its metadata."""
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)


def load_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Load weights saved by :func:`save_weights` into ``model`` (cast back to its dtype); returns metadata."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    return checkpoint.get("meta", {})


def plot_curves(history: list[dict], keys: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for key in keys:
        ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
