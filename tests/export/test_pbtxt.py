"""Every config.pbtxt is generated from the specs, parses as a Triton ModelConfig and wires consistently."""
from __future__ import annotations

import json

import pytest

from cxr.specs import ENSEMBLE_NAME, ENSEMBLE_OUTPUTS, ENSEMBLE_STEPS, MODEL_SPECS, PREPROCESS, ROUTER
from export.pbtxt import model_config, parse, render, repository_configs


def test_built_repository_configs_equal_the_rendered_specs(repository):
    versions = json.loads((repository / "build.json").read_text())["model_versions"]
    expected = repository_configs("cpu", versions)
    found = {p.parent.name: parse(p.read_text()) for p in repository.glob("*/config.pbtxt")}
    assert found.keys() == expected.keys()
    for name, config in expected.items():
        assert found[name] == config, name


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_profiles_render_and_parse(profile):
    for name, config in repository_configs(profile, {"x": "1"}).items():
        assert parse(render(config)) == config, name


def test_gpu_profile_uses_onnxruntime_with_tensorrt_fp16():
    for spec in MODEL_SPECS.values():
        config = model_config(spec, "gpu")
        assert config.platform == "onnxruntime_onnx" and not config.backend
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert list(config.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)


def test_ensemble_wiring_is_consistent():
    """Every step input is produced earlier (or is the request), every ensemble output is produced."""
    configs = repository_configs("cpu", {})
    available = {t.name for t in configs[ENSEMBLE_NAME].input}
    for role, inputs, outputs in ENSEMBLE_STEPS:
        step = configs[role]
        assert set(inputs) == {t.name for t in step.input}, role
        assert set(outputs) <= {t.name for t in step.output}, role
        assert set(inputs.values()) <= available, role
        available |= set(outputs.values())
    assert {t.name for t in ENSEMBLE_OUTPUTS} <= available
    assert [s.model_name for s in configs[ENSEMBLE_NAME].ensemble_scheduling.step] == [s[0] for s in ENSEMBLE_STEPS]
    assert {PREPROCESS.role, ROUTER.role} <= configs.keys()


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        model_config(MODEL_SPECS["cxr_classifier"], "tpu")


@pytest.mark.slow
def test_gpu_profile_repository_has_no_python_adapters_for_onnx_models(tmp_path):
    from export.build_repository import build_repository

    build_repository(tmp_path, profile="gpu")
    for spec in MODEL_SPECS.values():
        assert (tmp_path / spec.role / "1" / "model.onnx").exists()
        assert not (tmp_path / spec.role / "1" / "model.py").exists()
        assert parse((tmp_path / spec.role / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    for step in (PREPROCESS, ROUTER):
        assert (tmp_path / step.role / "1" / "model.py").exists() and (tmp_path / step.role / "1" / "cxr" / "specs.py").exists()
