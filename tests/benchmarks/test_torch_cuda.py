"""The GPU benchmark's numerics check, run here on CPU FP16; the timing itself needs CUDA (not in CI)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks import torch_cuda
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION

CPU = torch.device("cpu")


def test_fp16_answers_match_fp32_on_real_images(test_rows):
    blobs = [r.image.read_bytes() for r in test_rows[:4]]
    inputs, graphs, masks = torch_cuda.setup(blobs, 4, CPU)
    assert 0.2 < masks.mean().item() < 0.6  # real lungs, not an empty or full mask
    report = torch_cuda.fp16_report(inputs, graphs, masks, 4)
    assert report[LUNG_SEGMENTATION.name]["mask_pixel_agreement"] > 0.999
    for spec in torch_cuda.SPECS[1:]:
        assert report[spec.name]["max_probability_diff"] < 0.05
        assert report[spec.name]["top1_agreement"] == 1.0
    assert torch_cuda.call_args(CLASSIFIER, inputs, masks, 2, torch.float16)[1].dtype == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_without_cuda_it_says_so_and_exits_2():
    done = subprocess.run([sys.executable, "-m", "benchmarks.torch_cuda"], capture_output=True, text=True)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
