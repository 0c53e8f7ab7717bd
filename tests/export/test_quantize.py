"""INT8 (QDQ) graphs stay close to FP32 on real test images; the int8 profile serves them."""
from __future__ import annotations

import numpy as np
import pytest

from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION


@pytest.mark.slow
def test_int8_graphs_agree_with_fp32_on_real_images(repository, test_rows, tmp_path):
    from client.local_pipeline import LocalPipeline
    from export.quantize import calibration_blobs, quantize_repository
    from training.metrics import iou_dice

    files = quantize_repository(repository, tmp_path, calibration_blobs(16))
    assert set(files) == {LUNG_SEGMENTATION.role, CLASSIFIER.role}
    blobs = [r.image.read_bytes() for r in test_rows[:12]]
    fp32 = LocalPipeline(repository).run_batch(blobs)
    int8 = LocalPipeline(repository, onnx_files=files).run_batch(blobs)
    ious = [iou_dice(a.lung_mask, b.lung_mask)[0] for a, b in zip(fp32, int8)]
    assert np.mean(ious) >= 0.97
    diff = np.abs(np.stack([a.probabilities for a in fp32]) - np.stack([b.probabilities for b in int8]))
    assert diff.mean() <= 0.05
    agree = np.mean([a.probabilities.argmax() == b.probabilities.argmax() for a, b in zip(fp32, int8)])
    assert agree >= 0.8
    print(f"int8 vs fp32: mask IoU {np.mean(ious):.4f}, mean |dp| {diff.mean():.4f}, top-1 agreement {agree:.2f}")


def test_local_pipeline_reads_the_onnx_file_the_config_serves(tmp_path):
    from client.local_pipeline import served_onnx_file
    from export.pbtxt import model_config, render

    for profile, expected in (("cpu", "model.onnx"), ("cpu-int8", "model.int8.onnx"), ("gpu", "model.onnx")):
        role_dir = tmp_path / profile / CLASSIFIER.role
        role_dir.mkdir(parents=True)
        (role_dir / "config.pbtxt").write_text(render(model_config(CLASSIFIER, profile)))
        assert served_onnx_file(tmp_path / profile, CLASSIFIER.role) == expected
