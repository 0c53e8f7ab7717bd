"""ONNX export with explicit tensor names, a dynamic batch axis and an ONNX Runtime parity check.

    python -m export.onnx --out build/onnx        # both shipped models, parity-checked
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.specs import LUNG_SEGMENTATION, MODEL_SPECS, ModelSpec
from training.serving_graph import serving_graph

LOGIT_ATOL = 1e-4  # logits and probabilities: absolute
MAP_RTOL = 1e-3  # other float maps (the CAM sums 1280 channels): relative to the map's largest magnitude
MASK_AGREEMENT = 0.999


def example_inputs(spec: ModelSpec, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs shaped per ``spec``: normal noise for images, a lung-like binary mask for masks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        if "mask" in t.name:
            mask = torch.zeros(batch, *t.dims)
            h, w = t.dims[-2:]
            mask[..., h // 6 : 5 * h // 6, w // 8 : 7 * w // 8] = 1
            out.append(mask)
        else:
            out.append(torch.randn(batch, *t.dims, generator=g))
    return tuple(out)


@dataclass(frozen=True)
class Parity:
    max_abs_diff: dict[str, float]
    tolerance: dict[str, float]
    mask_agreement: float | None

    @property
    def ok(self) -> bool:
        values_ok = all(self.max_abs_diff[n] <= tol for n, tol in self.tolerance.items())
        return values_ok and (self.mask_agreement is None or self.mask_agreement >= MASK_AGREEMENT)


def check_parity(graph: nn.Module, onnx_path: Path, spec: ModelSpec, inputs: tuple[torch.Tensor, ...]) -> Parity:
    """Run torch and ONNX Runtime on ``inputs`` and compare every output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
    ort_out = session.run([t.name for t in spec.outputs], feeds)
    with torch.no_grad():
        torch_out = graph(*inputs)
    torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
    diffs, tolerance, agreement = {}, {}, None
    for t, a, b in zip(spec.outputs, torch_out, ort_out):
        a = a.numpy()
        diffs[t.name] = float(np.abs(a - b).max())
        if t.name == LUNG_SEGMENTATION.outputs[0].name:  # a binary mask: agreement, not a distance
            agreement = float((a == b).mean())
        elif t.name.endswith(("logits", "probabilities")):
            tolerance[t.name] = LOGIT_ATOL
        else:
            tolerance[t.name] = MAP_RTOL * float(np.abs(a).max())
    return Parity(diffs, tolerance, agreement)


def export_onnx(spec: ModelSpec, path: str | Path, weights: str | Path | None = None, verify: bool = True) -> Parity | None:
    """Export ``spec``'s model to ``path`` (opset 17, dynamic batch), run the ONNX checker and the parity check.

    Raises:
        RuntimeError: ONNX Runtime disagrees with PyTorch beyond the tolerances.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = serving_graph(spec, weights)
    inputs = example_inputs(spec)
    names_in, names_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    torch.onnx.export(
        graph,
        inputs,
        str(path),
        input_names=names_in,
        output_names=names_out,
        dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    _declare_shapes(model, spec)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    if not verify:
        return None
    parity = check_parity(graph, path, spec, example_inputs(spec, batch=3, seed=1))
    if not parity.ok:
        raise RuntimeError(f"{spec.role}: ONNX Runtime disagrees with PyTorch: {parity}")
    return parity


def export_any(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path) -> float:
    """Export any registered model (eval mode, dynamic batch, opset 17) and return max |ONNX Runtime - PyTorch|.

    Inputs are named ``image`` (and ``lung_mask`` for mask-attention models), the output ``output``. Used by the
    table-driven test that every registered architecture exports; served models go through :func:`export_onnx`.
    """
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = ["image", "lung_mask"][: len(inputs)]
    torch.onnx.export(model, inputs, str(path), input_names=names, output_names=["output"],
                      dynamic_axes={n: {0: "batch"} for n in [*names, "output"]}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    with torch.no_grad():
        torch_out = model(*inputs).numpy()
    return float(np.abs(ort_out - torch_out).max())


def _declare_shapes(model, spec: ModelSpec) -> None:
    """Write ``(batch, *spec dims)`` on every graph input/output (the tracer can leave odd symbolic names)."""
    tensors = {t.name: t for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        for dim, size in zip(list(dims)[1:], tensors[value.name].dims):
            dim.Clear()
            dim.dim_value = size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/onnx")
    parser.add_argument("--role", choices=sorted(MODEL_SPECS), action="append", help="default: all")
    args = parser.parse_args(argv)
    for role in args.role or sorted(MODEL_SPECS):
        spec = MODEL_SPECS[role]
        parity = export_onnx(spec, Path(args.out) / f"{role}.onnx")
        print(f"{role}: parity ok, max|diff| {parity.max_abs_diff}, mask agreement {parity.mask_agreement}")


if __name__ == "__main__":
    main()
