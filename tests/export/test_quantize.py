"""INT8 (QDQ) graphs stay close to FP32 on real test images, give the same answers on an AVX2-only CPU
(emulated: ``qemu-x86_64 -cpu EPYC-Rome``) as here, and a host that cannot hold the bounds is refused."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION

AVX2_ONLY_CPU = "EPYC-Rome"  # AMD Zen 2: AVX2 + FMA, no AVX-512, no VNNI (the CPU kind of the issue)


@pytest.fixture(scope="module")
def int8_dir(repository, tmp_path_factory):
    """The served graphs quantized as ``cpu-int8`` does (16 calibration images)."""
    from export.quantize import calibration_blobs, quantize_repository

    out = tmp_path_factory.mktemp("int8")
    files = quantize_repository(repository, out, calibration_blobs(16))
    assert set(files) == {LUNG_SEGMENTATION.role, CLASSIFIER.role}
    return out


@pytest.mark.slow
def test_int8_graphs_agree_with_fp32_on_real_images(repository, test_rows, int8_dir):
    from cxr.pipeline import LocalPipeline
    from training.metrics import iou_dice

    files = {role: int8_dir / f"{role}.onnx" for role in (LUNG_SEGMENTATION.role, CLASSIFIER.role)}
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


def _emulated(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:  # `make setup` installs Debian's qemu-user; without it this check cannot run at all
        pytest.fail("qemu-x86_64 not found: install Debian's qemu-user (make system-packages)")
    return subprocess.run([qemu, "-cpu", AVX2_ONLY_CPU, sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_int8_answers_on_an_avx2_only_cpu_are_the_answers_here(repository, int8_dir, tmp_path):
    """Bit for bit: the emulated AVX2 host's masks and probabilities equal this host's, and hold the bounds."""
    from export.quantize import CHECK_IMAGES, agreement, answers, calibration_blobs

    probe = _emulated(["-c", "import numpy.core._multiarray_umath as m, json; f = m.__cpu_features__; "
                             "print(json.dumps({k: f[k] for k in ('AVX2', 'FMA3', 'AVX512F', 'AVX512VNNI')}))"])
    features = json.loads(probe.stdout.strip().splitlines()[-1])
    assert features == {"AVX2": True, "FMA3": True, "AVX512F": False, "AVX512VNNI": False}, features

    out = tmp_path / "avx2.npz"
    run = _emulated(["-m", "export.quantize", "--repository", str(repository), "--out", str(int8_dir),
                     "--answers", str(out)])
    assert run.returncode == 0, run.stderr[-2000:]
    emulated = dict(np.load(out))
    blobs = calibration_blobs(CHECK_IMAGES, split="val")
    files = {role: int8_dir / f"{role}.onnx" for role in (LUNG_SEGMENTATION.role, CLASSIFIER.role)}
    here = answers(repository, blobs, files)
    assert np.array_equal(emulated["masks"], here["masks"])
    np.testing.assert_allclose(emulated["probabilities"], here["probabilities"], rtol=0, atol=1e-6)
    fp32 = answers(repository, blobs, {r: repository / r / "1" / "model.onnx" for r in files})
    result = agreement(fp32, emulated)
    assert result["holds"], result
    print(f"AVX2 ({AVX2_ONLY_CPU}, emulated) = this host; vs fp32: {result}")


@pytest.mark.slow
def test_build_refuses_int8_on_a_host_that_misses_the_bounds(repository, tmp_path, monkeypatch):
    """The real quantization and check, with a bound no graph can meet, stand in for a CPU that saturates."""
    import export.quantize
    from cxr.cpu import describe_cpu
    from export.build_repository import Int8Refused, _quantize
    from export.pbtxt import ONNX_FILES

    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    monkeypatch.setitem(export.quantize.BOUNDS, "mask_iou", 1.01)
    with pytest.raises(Int8Refused) as refused:
        _quantize(copy, calibration=8)
    message = str(refused.value)
    assert describe_cpu()["isa"] in message and "mask_iou" in message and "--profile cpu" in message
    assert not any((copy / role / "1" / ONNX_FILES["cpu-int8"]).exists() for role in (LUNG_SEGMENTATION.role, CLASSIFIER.role))


def test_serve_says_which_cpu_checked_the_int8_answers():
    from cxr.cpu import int8_host_note

    vnni = {"model": "Intel Xeon", "isa": "avx512-vnni", "flags": ["avx2", "avx512_vnni"]}
    avx2 = {"model": "AMD EPYC 7B12", "isa": "avx2", "flags": ["avx2", "fma"]}
    record = {"format": "QDQ", "host": vnni, "agreement": {"mask_iou": 0.997, "mean_abs_dp": 0.02}}
    same, message = int8_host_note(record, vnni)
    assert same and "Intel Xeon (avx512-vnni)" in message and "mean_abs_dp 0.0200" in message
    same, message = int8_host_note(record, avx2)
    assert not same and "AMD EPYC 7B12 (avx2)" in message and "was not checked" in message
    same, message = int8_host_note(None, avx2)
    assert not same and "never checked" in message


def test_isa_classes_from_cpu_flags(tmp_path):
    from cxr.cpu import describe_cpu, isa_class

    assert isa_class({"avx2", "fma", "avx512f", "avx512_vnni"}) == "avx512-vnni"
    assert isa_class({"avx2", "fma", "avx_vnni"}) == "avx-vnni"
    assert isa_class({"avx2", "fma"}) == "avx2"
    assert isa_class({"sse4_2"}) == "x86-64"
    assert isa_class({"asimd"}, machine="aarch64") == "aarch64"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\n"
                       "flags\t\t: fpu sse2 avx2 fma bmi2\n\nprocessor\t: 1\nmodel name\t: other\n")
    described = describe_cpu(cpuinfo)
    assert described["model"] == "AMD EPYC 7B12" and described["vendor"] == "AuthenticAMD"
    assert described["flags"] == ["avx2", "fma"]


def test_local_pipeline_reads_the_onnx_file_the_config_serves(tmp_path):
    from cxr.pipeline import served_onnx_file
    from cxr.model_config import render
    from export.pbtxt import model_config

    for profile, expected in (("cpu", "model.onnx"), ("cpu-int8", "model.int8.onnx"), ("gpu", "model.onnx")):
        role_dir = tmp_path / profile / CLASSIFIER.role
        role_dir.mkdir(parents=True)
        (role_dir / "config.pbtxt").write_text(render(model_config(CLASSIFIER, profile)))
        assert served_onnx_file(tmp_path / profile, CLASSIFIER.role) == expected
