"""``cxr report``: train (or load) the papers' classifiers with one recipe and write a table like theirs.

    python -m benchmarks.report [--models resnet34 resnet34_ma ...] [--size 128] [--epochs 4] [--seeds 11 12 13]
        [--manifest A --manifest B] [--out docs/report]

Each model is trained by :mod:`training.train_classifier` (the served classifier's recipe, same data, same
segmenter masks) at ``--size`` px for ``--epochs`` epochs, from scratch, on this CPU: far below the papers'
resolution, epochs and ImageNet initialisation, so the numbers rank architectures under one small budget and
say nothing about what the papers' full recipes reach (their configs are ``training/configs``). A model whose
``<out>/<model>.json`` exists is loaded, not retrained. Writes ``report.md``, ``report.json`` and each model's
confusion matrix and ROC plot under ``--out``. With several ``--seeds`` each model trains once per seed and
the table gives mean +- sd over the seeds (a difference smaller than the sd says nothing), test and val.
Manifests: every ``--manifest``, else the base config's ``manifests``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from benchmarks.flops import count
from cxr.cpu import cpu_line, describe_cpu
from cxr.labels import LABELS
from cxr.onnx_session import cpu_session
from training.common import REPO
from training.models import create_model
from training.train_classifier import main as train

# What fits a session on 2 CPU cores (about 4 minutes a model at 128 px, 3 epochs); add the heavier ones
# (resnet50_ma, inception_v3_ma, vgg16_ma, dpn92_se, dpn92_gc, seme_densenet169, ...) with --models.
DEFAULT_MODELS = ("mobilenetv2_mdconv", "mobilenetv2_mdconv_ma", "mobilenetv3_mdconv", "resnet34", "resnet34_ma",
                  "resnet34_cbam", "seme_resnet50")
MOEX = {"moex_p": 0.5, "moex_lambda": 0.9}  # for the models that have a MoEx layer (SEME)
BASE_CONFIG = REPO / "training" / "configs" / "mobilenetv2_mdconv_ma.yaml"


def train_one(model: str, size: int, epochs: int, manifests: list[str] | None, out: Path, limit: int | None = None,
              seed: int | None = None) -> dict:
    config = {**yaml.safe_load(BASE_CONFIG.read_text()), **MOEX, "model": model, "epochs": epochs, "input_size": size}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    argv = ["--config", f.name] + [a for m in manifests or () for a in ("--manifest", m)]
    argv += (["--limit", str(limit)] if limit else []) + (["--seed", str(seed)] if seed is not None else [])
    metrics = train(argv)
    Path(f.name).unlink()
    run_dir = Path(metrics["run_dir"])
    cost = count(model, size, in_chans=1, num_classes=len(LABELS))
    row = {"model": model, "input_size": size, "epochs": epochs, "params_m": cost["params_m"], "seed": metrics["config"]["seed"],
           "mmacs": cost["gmacs"] * 1e3 + cost["ma_mmacs_per_position"], "test": metrics["test"], "val": metrics["val"],
           "train_seconds": metrics["train_seconds"]}
    name = model if seed is None else f"{model}_seed{seed}"
    (out / f"{name}.json").write_text(json.dumps(row, indent=2))
    for plot in ("confusion_test.png", "roc_test.png"):
        shutil.copy(run_dir / plot, out / f"{name}_{plot}")
    return row


def onnx_rates(models: list[str], size: int, batch: int = 8, rounds: int = 5, images: int = 64) -> dict[str, float]:
    """Classifier-only img/s of each model in ONNX Runtime (FP32, this CPU's :func:`cxr.onnx_session.cpu_session`,
    batch ``batch``): untrained weights cost what trained ones do. Models are timed in alternation, ``rounds``
    times, and the median kept, so load from anything else on the host is shared evenly."""
    import time

    import torch

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            model = create_model(model_name, num_classes=len(LABELS)).eval()
            uses_mask = getattr(model, "uses_mask", False)
            args = (torch.zeros(batch, 1, size, size),) + ((torch.ones(batch, 1, size, size),) if uses_mask else ())
            path = Path(tmp) / f"{model_name}.onnx"
            torch.onnx.export(model, args, path, input_names=["image", "mask"][: len(args)], dynamo=False)
            sessions[model_name] = (cpu_session(path), {n: a.numpy() for n, a in zip(("image", "mask"), args)})
        rates = {m: [] for m in models}
        for _ in range(rounds):
            for model_name, (session, feeds) in sessions.items():
                session.run(None, feeds)  # warm
                started = time.perf_counter()
                for _ in range(images // batch):
                    session.run(None, feeds)
                rates[model_name].append(images / (time.perf_counter() - started))
    return {m: float(np.median(r)) for m, r in rates.items()}


def seeded_markdown(runs: dict[str, list[dict]], rates: dict[str, float] | None = None) -> str:
    """One row per model: mean +- sd over its seeds of accuracy, macro-F1, per-class F1 (test) and val macro-F1."""
    def mean_sd(values: list[float]) -> str:
        return f"{np.mean(values):.3f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"

    first = next(iter(runs.values()))[0]["test"]
    present = first["labels_present"]
    head = ["model", "input", "epochs", "seeds", "M MACs", "img/s (ORT FP32)", "test accuracy", "test macro-F1",
            *(f"F1 {k}" for k in present), "normal-vs-abnormal AUC", "val macro-F1", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, rows in runs.items():
        rate = f"{rates[model]:.0f}" if rates and model in rates else "-"
        cells = [model, str(rows[0]["input_size"]), str(rows[0]["epochs"]), str(len(rows)), f"{rows[0]['mmacs']:,.0f}", rate,
                 mean_sd([r["test"]["accuracy"] for r in rows]), mean_sd([r["test"]["macro_f1"] for r in rows])]
        cells += [mean_sd([r["test"]["per_class"][k]["f1"] for r in rows]) for k in present]
        cells += [mean_sd([r["test"]["abnormal_auc"] for r in rows]) if all("abnormal_auc" in r["test"] for r in rows) else "-",
                  mean_sd([r["val"]["macro_f1"] for r in rows]), f"{np.mean([r['train_seconds'] for r in rows]) / 60:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    present = [k for k in LABELS if any(r["test"]["per_class"][k]["support"] for r in rows)]
    head = ["model", "input", "epochs", "params M", "M MACs", "accuracy", "macro-F1"]
    head += [f"F1 {k}" for k in present] + [f"AUC {k}" for k in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["test"]
        cells = [r["model"], str(r["input_size"]), str(r["epochs"]), f"{r['params_m']:.2f}", f"{r['mmacs']:,.0f}",
                 f"{t['accuracy']:.3f}", f"{t['macro_f1']:.3f}"]
        cells += [f"{t['per_class'][k]['f1']:.3f}" for k in present]
        cells += [f"{t['per_class'][k]['auc']:.3f}" if t["per_class"][k]["auc"] is not None else "-" for k in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="cxr report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--manifest", action="append", help="repeat for several (default: the base config's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train each model once per seed; mean +- sd table")
    parser.add_argument("--limit", type=int, help="images per split (smoke runs)")
    parser.add_argument("--cost", action="store_true", help="also time each model's classifier in ONNX Runtime "
                        "(img/s column; run it on an otherwise idle host)")
    parser.add_argument("--only-cached", action="store_true",
                        help="table from the runs already in --out (per model, the seeds that finished); train none")
    parser.add_argument("--out", default="docs/report")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.seeds:
        runs = {model: [] for model in args.models}
        for seed in args.seeds:  # seed-major: a run stopped half-way leaves every model with as many seeds as possible
            for model in args.models:
                cached = out / f"{model}_seed{seed}.json"
                if cached.exists():
                    runs[model].append(json.loads(cached.read_text()))
                elif not args.only_cached:
                    runs[model].append(train_one(model, args.size, args.epochs, args.manifest, out, args.limit, seed))
        runs = {model: rows for model, rows in runs.items() if rows}
        rates = onnx_rates(list(runs), args.size) if args.cost else None
        seeds = sorted({r["seed"] for rows in runs.values() for r in rows})
        text = (f"Test split ({next(iter(runs.values()))[0]['test']['n']} images, both data sets), each model trained "
                f"from scratch at {args.size} px for {args.epochs} epochs with one recipe and seeds {seeds} "
                "(`python -m benchmarks.report --seeds ...`): mean +- sd over its seeds (the `seeds` column).")
        if rates:
            text += (f" img/s: the classifier alone in ONNX Runtime, FP32, batch 8, 2 threads, median of 5 alternating "
                     f"rounds, on {cpu_line(describe_cpu())}.")
        _write(out / "seeded", text + "\n\n" + seeded_markdown(runs, rates), {"runs": runs, "img_s": rates})
        return [r for rows in runs.values() for r in rows]
    rows = []
    for model in args.models:
        cached = out / f"{model}.json"
        rows.append(json.loads(cached.read_text()) if cached.exists()
                    else train_one(model, args.size, args.epochs, args.manifest, out, args.limit))
    text = (f"Test split ({rows[0]['test']['n']} images), trained here from scratch at {args.size} px for "
            f"{args.epochs} epochs each with one recipe (`python -m benchmarks.report`); MACs at that size, "
            "1-channel input. Not the papers' recipes: compare rows with each other, not with the papers.\n\n")
    _write(out / "report", text + markdown(rows), rows)
    return rows


def _write(stem: Path, text: str, payload) -> None:
    """``<stem>.md`` (and printed), ``<stem>.json``."""
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(text)


if __name__ == "__main__":
    main()
