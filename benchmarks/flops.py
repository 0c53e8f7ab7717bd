"""Multiply-accumulates and parameters of every registered model, checked against the papers' own tables.

    cxr flops [--json]          (same as: python -m benchmarks.flops)

MACs are counted by PyTorch's FLOP counter (convolutions and matrix products; MAC = FLOP / 2) on the
``meta`` device, so nothing is computed. Rows with a paper number are configured as the paper counted them
(3-channel input, its resolution and class count) and show the deviation; the goal is within +-3 %.

Mask attention adds an elementwise product per masked layer, which the counter does not see. It is added
here in two ways: ``ma_mmacs_per_position`` (one multiply per spatial position of each masked layer, the
1-channel mask) and ``ma_mmacs_elementwise`` (one per feature element). MANet's "+0.1-1 M" matches the first.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION, ModelSpec
from training.layers import MaskAttention, MaskedOutput
from training.models import create_model


@dataclass(frozen=True)
class PaperRow:
    model: str
    input_size: int
    num_classes: int
    mmacs: float
    params_m: float | None
    source: str


PAPER_ROWS = (
    PaperRow("resnet50", 448, 14, 16395, None, "MD-Conv Table 7"),
    PaperRow("densenet121", 448, 14, 11405, None, "MD-Conv Table 7"),
    PaperRow("mobilenetv2_mdconv", 448, 14, 1241, 2.3, "MD-Conv Table 7"),
    PaperRow("mobilenetv2", 448, 14, 1223, None, "MD-Conv Table 5"),
    PaperRow("resnet34", 512, 5, 18766.76, 21.28, "MANet Table 3"),
    PaperRow("resnet50", 512, 5, 21058.83, 23.51, "MANet Table 3"),
    PaperRow("vgg16", 512, 5, 80208.35, 134.29, "MANet Table 3"),
    PaperRow("inception_v3", 512, 5, 17537.14, 21.80, "MANet Table 3"),
    PaperRow("resnet34_ma", 512, 5, 18766.76, 21.28, "MANet Table 3 (+MA: same params, +0.1-1 M MACs)"),
    PaperRow("resnet50_ma", 512, 5, 21058.83, 23.51, "MANet Table 3 (+MA)"),
    PaperRow("vgg16_ma", 512, 5, 80208.35, 134.29, "MANet Table 3 (+MA)"),
    PaperRow("inception_v3_ma", 512, 5, 17537.14, 21.80, "MANet Table 3 (+MA)"),
)
SERVED_SPECS = (LUNG_SEGMENTATION, CLASSIFIER)
TOLERANCE = 0.03


def count(name: str, input_size: int, in_chans: int = 1, **overrides) -> dict:
    """``{"model", "input_size", "gmacs", "params_m", "ma_mmacs_per_position", "ma_mmacs_elementwise"}``."""
    with torch.device("meta"):
        model = create_model(name, in_chans=in_chans, **overrides).eval()
    params = sum(p.numel() for p in model.parameters())
    ma = {"positions": 0, "elements": 0}

    def on_mask(_module, _inputs, output):
        ma["positions"] += output.shape[0] * output.shape[-2] * output.shape[-1]
        ma["elements"] += output.numel()

    hooks = [m.register_forward_hook(on_mask) for m in model.modules() if isinstance(m, (MaskAttention, MaskedOutput))]
    x = torch.zeros(1, in_chans, input_size, input_size, device="meta")
    args = (x, torch.zeros(1, 1, input_size, input_size, device="meta")) if getattr(model, "uses_mask", False) else (x,)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    for hook in hooks:
        hook.remove()
    return {"model": name, "input_size": input_size, "in_chans": in_chans,
            "gmacs": counter.get_total_flops() / 2e9, "params_m": params / 1e6,
            "ma_mmacs_per_position": ma["positions"] / 1e6, "ma_mmacs_elementwise": ma["elements"] / 1e6}


def count_spec(spec: ModelSpec) -> dict:
    """:func:`count` for a served model as its spec builds it (1-channel input, its size and class count)."""
    return count(spec.name, spec.input_size[0], **({"num_classes": len(spec.labels)} if spec.labels else {}))


def table() -> list[dict]:
    rows = []
    for paper in PAPER_ROWS:
        row = count(paper.model, paper.input_size, in_chans=3, num_classes=paper.num_classes)
        total = row["gmacs"] * 1e3 + row["ma_mmacs_per_position"]
        row.update(num_classes=paper.num_classes, source=paper.source, paper_mmacs=paper.mmacs,
                   paper_params_m=paper.params_m, mmacs_deviation=total / paper.mmacs - 1)
        if paper.params_m is not None:
            row["params_deviation"] = row["params_m"] / paper.params_m - 1
        row["within_3pct"] = abs(row["mmacs_deviation"]) <= TOLERANCE and abs(row.get("params_deviation", 0)) <= TOLERANCE
        rows.append(row)
    for spec in SERVED_SPECS:
        rows.append({**count_spec(spec), "source": "served here (1-channel input)"})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<22} {'input':>5} {'GMACs':>8} {'params M':>8} {'+MA M':>6} {'paper M MACs':>12} "
          f"{'paper params':>12} {'dev MACs':>8} {'dev par':>7}  source")
    for r in rows:
        paper = f"{r['paper_mmacs']:>12,.2f}" if "paper_mmacs" in r else f"{'':>12}"
        params = f"{r['paper_params_m']:>12.2f}" if r.get("paper_params_m") else f"{'':>12}"
        dev = f"{100 * r['mmacs_deviation']:>+7.2f}%" if "mmacs_deviation" in r else f"{'':>8}"
        dev_p = f"{100 * r['params_deviation']:>+6.2f}%" if "params_deviation" in r else f"{'':>7}"
        print(f"{r['model']:<22} {r['input_size']:>5} {r['gmacs']:>8.3f} {r['params_m']:>8.2f} "
              f"{r['ma_mmacs_per_position']:>6.2f} {paper} {params} {dev} {dev_p}  {r['source']}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="cxr flops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = table()
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
    return rows


if __name__ == "__main__":
    main()
