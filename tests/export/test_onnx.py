"""ONNX export: explicit names, dynamic batch, parity with PyTorch (random and shipped weights, real images)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION, MODEL_SPECS
from export.onnx import LOGIT_ATOL, MASK_AGREEMENT, check_parity, export_onnx
from training.serving_graph import serving_graph
from training.common import save_weights
from tests.training.test_models import CASES as MODEL_CASES
from training.models import create_model


@pytest.fixture(scope="module", params=sorted(MODEL_SPECS))
def exported(request, tmp_path_factory):
    spec = MODEL_SPECS[request.param]
    tmp = tmp_path_factory.mktemp(spec.role)
    torch.manual_seed(0)
    save_weights(create_model(spec.name), tmp / "w.pt", {})
    parity = export_onnx(spec, tmp / "model.onnx", tmp / "w.pt")
    return spec, tmp / "model.onnx", parity


def test_parity_with_random_weights(exported):
    spec, _, parity = exported
    assert parity.ok, parity
    if spec is LUNG_SEGMENTATION:
        assert parity.mask_agreement >= MASK_AGREEMENT
    else:
        logits = next(v for k, v in parity.max_abs_diff.items() if k.endswith("logits"))
        assert logits <= LOGIT_ATOL


def test_names_and_dynamic_batch(exported):
    spec, path, _ = exported
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
    assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs]
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        feeds = {t.name: np.zeros((batch, *t.dims), np.float32) for t in spec.inputs}
        outs = session.run(None, feeds)
        assert [o.shape for o in outs] == [(batch, *t.dims) for t in spec.outputs]


def test_shipped_weights_parity_on_real_images(repository, test_rows):
    """The served ONNX files agree with PyTorch on real test images (logits <= 1e-4, masks >= 99.9%)."""
    blobs = [r.image.read_bytes() for r in test_rows[:6]]
    prepared = [prepare_bytes(b, (LUNG_SEGMENTATION, CLASSIFIER)) for b in blobs]
    seg_in = torch.from_numpy(np.stack([p[0] for p in prepared]))
    seg_parity = check_parity(serving_graph(LUNG_SEGMENTATION), repository / "lung_segmentation/1/model.onnx", LUNG_SEGMENTATION, (seg_in,))
    assert seg_parity.ok and seg_parity.mask_agreement >= MASK_AGREEMENT, seg_parity
    with torch.no_grad():
        mask = serving_graph(LUNG_SEGMENTATION)(seg_in)
    cls_in = torch.from_numpy(np.stack([p[1] for p in prepared]))
    cls_parity = check_parity(serving_graph(CLASSIFIER), repository / "cxr_classifier/1/model.onnx", CLASSIFIER, (cls_in, mask))
    assert cls_parity.ok and cls_parity.max_abs_diff["logits"] <= LOGIT_ATOL, cls_parity


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_every_registered_model_exports_with_parity(name, tmp_path):
    """Table-driven: every architecture in the registry exports to ONNX and ONNX Runtime agrees with PyTorch."""
    from export.onnx import export_any

    shape, needs_mask, _ = MODEL_CASES[name]
    torch.manual_seed(0)
    model = create_model(name).eval()
    inputs = (torch.randn(shape),) + ((torch.ones(shape[0], 1, *shape[-2:]),) if needs_mask else ())
    with torch.no_grad():
        scale = max(1.0, float(model(*inputs).abs().max()))
    assert export_any(model, inputs, tmp_path / f"{name}.onnx") <= 1e-4 * scale
