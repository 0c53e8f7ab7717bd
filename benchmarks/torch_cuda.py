"""The served models in PyTorch on a CUDA GPU, FP16 against FP32: what a GPU host gets before TensorRT.

    python -m benchmarks.torch_cuda [--batch 1 8 32 128] [--json PATH]

Each served graph (``training.serving_graph.serving_graph``: segmenter, MA classifier, COVID stage 2, shipped weights)
runs in eval mode, channels_last, on real test-split images prepared by the serving code
(``cxr.preprocess.prepare_bytes``). Per batch size, CUDA events time ``iters`` back-to-back calls after a
warm-up; the median of five such repeats is kept. FP16 casts module and inputs (``.half()``), and its answers
are compared with FP32 on the same images (segmenter pixel agreement, largest probability difference,
top-1 agreement), so a speed number never hides a wrong answer. ``pipeline_img_s`` is segmenter + classifier
back-to-back per image at that batch size (stage 2 runs only for images routed to it).
Needs a CUDA device: on a machine without one it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch

from benchmarks.flops import count_spec
from benchmarks.images import benchmark_images
from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, COVID_STAGE2, LUNG_SEGMENTATION, ModelSpec
from training.serving_graph import serving_graph

SPECS = (LUNG_SEGMENTATION, CLASSIFIER, COVID_STAGE2)


def real_inputs(blobs: list[bytes], count: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``count`` prepared images per spec (cycling through ``blobs``), FP32 on ``device``."""
    prepared = [prepare_bytes(blobs[i % len(blobs)], SPECS) for i in range(count)]
    return {spec.name: torch.from_numpy(np.stack([p[k] for p in prepared])).to(device) for k, spec in enumerate(SPECS)}


def graph_on(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return serving_graph(spec).to(device=device, dtype=dtype, memory_format=torch.channels_last)


def call_args(spec: ModelSpec, inputs: dict[str, torch.Tensor], masks: torch.Tensor, batch: int, dtype: torch.dtype):
    image = inputs[spec.name][:batch].to(dtype).contiguous(memory_format=torch.channels_last)
    return (image, masks[:batch].to(dtype)) if spec is CLASSIFIER else (image,)


@torch.inference_mode()
def time_call(graph: torch.nn.Module, args: tuple, iters: int, repeats: int = 5) -> float:
    """Median milliseconds per call over ``repeats`` runs of ``iters`` back-to-back calls."""
    for _ in range(3):
        graph(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


@torch.inference_mode()
def fp16_agreement(spec: ModelSpec, fp32: torch.nn.Module, fp16: torch.nn.Module, args32: tuple) -> dict:
    """How far FP16's answers are from FP32's on the same real images."""
    args16 = tuple(a.half() for a in args32)
    out32, out16 = fp32(*args32), fp16(*args16)
    if spec is LUNG_SEGMENTATION:
        return {"mask_pixel_agreement": (out32 == out16.float()).float().mean().item()}
    p32, p16 = out32[1], out16[1].float()  # (logits, probabilities[, cam])
    return {"max_probability_diff": (p32 - p16).abs().max().item(),
            "top1_agreement": (p32.argmax(1) == p16.argmax(1)).float().mean().item()}


def setup(blobs: list[bytes], count: int, device: torch.device) -> tuple[dict, dict, torch.Tensor]:
    """Prepared inputs per spec, FP32 and FP16 graphs per spec, and the classifier's lung masks."""
    inputs = real_inputs(blobs, count, device)
    graphs = {(s.name, d): graph_on(s, device, d) for s in SPECS for d in (torch.float32, torch.float16)}
    with torch.inference_mode():  # the classifier's mask input is the FP32 segmenter's answer, as served
        masks = graphs[(LUNG_SEGMENTATION.name, torch.float32)](inputs[LUNG_SEGMENTATION.name])
    return inputs, graphs, masks


def fp16_report(inputs: dict, graphs: dict, masks: torch.Tensor, batch: int) -> dict:
    """:func:`fp16_agreement` of every served graph on the first ``batch`` images."""
    return {s.name: fp16_agreement(s, graphs[(s.name, torch.float32)], graphs[(s.name, torch.float16)],
                                   call_args(s, inputs, masks, batch, torch.float32))
            for s in SPECS}


def measure(blobs: list[bytes], batches: list[int], iters: int = 20) -> dict:
    torch.backends.cudnn.benchmark = True
    inputs, graphs, masks = setup(blobs, max(batches), torch.device("cuda"))
    gmacs = {s.name: count_spec(s)["gmacs"] for s in SPECS}
    rows = []
    for dtype, label in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        for batch in batches:
            ms = {s.name: time_call(graphs[(s.name, dtype)], call_args(s, inputs, masks, batch, dtype), iters)
                  for s in SPECS}
            rows.append({
                "precision": label, "batch": batch,
                **{f"{name}_ms": v for name, v in ms.items()},
                **{f"{name}_tflop_s": 2 * gmacs[name] * batch / (v / 1e3) / 1e3 for name, v in ms.items()},
                "pipeline_img_s": batch / ((ms[LUNG_SEGMENTATION.name] + ms[CLASSIFIER.name]) / 1e3),
            })
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "images": len(blobs),
            "gmacs_per_image": gmacs, "rows": rows, "fp16_vs_fp32": fp16_report(inputs, graphs, masks, max(batches))}


def print_table(result: dict) -> None:
    names = [s.name for s in SPECS]
    print(f"{result['device']}, torch {result['torch']}; ms per batch (TFLOP/s)")
    print(f"{'prec':>5} {'batch':>5} " + " ".join(f"{n:>26}" for n in names) + f" {'seg+cls img/s':>14}")
    for r in result["rows"]:
        cells = " ".join(f"{r[f'{n}_ms']:>17.3f} ({r[f'{n}_tflop_s']:>5.1f})" for n in names)
        print(f"{r['precision']:>5} {r['batch']:>5} {cells} {r['pipeline_img_s']:>14.0f}")
    print("FP16 vs FP32 on the same images:", json.dumps(result["fp16_vs_fp32"]))


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.torch_cuda needs a CUDA GPU; none is visible here", file=sys.stderr)
        sys.exit(2)
    result = measure(benchmark_images(), args.batch, args.iters)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
