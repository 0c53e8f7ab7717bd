"""Every config.pbtxt is generated from the specs, parses as a Triton ModelConfig and wires consistently."""
from __future__ import annotations

import pytest

from cxr.specs import ENSEMBLE_NAME, ENSEMBLE_OUTPUTS, ENSEMBLE_STEPS, MODEL_SPECS, PREPROCESS, ROUTER
from cxr.model_config import parse, render
from export.pbtxt import PROFILES, model_config, repository_configs


def test_built_repository_configs_equal_the_rendered_specs_pinned_to_the_serving_release(repository):
    from cxr.release_record import serving_pins

    expected = repository_configs("cpu")
    pins = serving_pins(repository)
    for name, config in expected.items():
        if name == ENSEMBLE_NAME:
            for step in config.ensemble_scheduling.step:
                step.model_version = pins[step.model_name]
        else:
            config.version_policy.specific.versions[:] = [pins[name]]
    found = {p.parent.name: parse(p.read_text()) for p in repository.glob("*/config.pbtxt")}
    assert found.keys() == expected.keys()
    for name, config in expected.items():
        assert found[name] == config, name


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_render_and_parse(profile):
    for name, config in repository_configs(profile).items():
        assert parse(render(config)) == config, name


def test_gpu_profile_uses_onnxruntime_with_tensorrt_fp16():
    for spec in MODEL_SPECS.values():
        config = model_config(spec, "gpu")
        assert config.platform == "onnxruntime_onnx" and not config.backend
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert list(config.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)


def test_cpu_profiles_differ_only_in_the_onnx_file():
    from export.pbtxt import INT8_ROLES

    assert set(INT8_ROLES) < set(MODEL_SPECS)  # cascade stage 2 stays FP32
    for spec in MODEL_SPECS.values():
        fp32, int8 = model_config(spec, "cpu"), model_config(spec, "cpu-int8")
        assert fp32.parameters["onnx_file"].string_value == "model.onnx"
        expected = "model.int8.onnx" if spec.role in INT8_ROLES else "model.onnx"
        assert int8.parameters["onnx_file"].string_value == expected
        int8.parameters["onnx_file"].string_value = "model.onnx"
        assert int8 == fp32


def test_tensorrt_plan_profile_and_engine_shapes_match_the_dynamic_batcher(tmp_path):
    from export.tensorrt import build_engines

    for spec in MODEL_SPECS.values():
        config = model_config(spec, "gpu-trt")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        (tmp_path / spec.role / "1").mkdir(parents=True)
        (tmp_path / spec.role / "1" / "model.onnx").write_bytes(b"")
    commands = {c[1]: c for c in build_engines(tmp_path, print_only=True)}
    for spec in MODEL_SPECS.values():
        command = commands[f"--onnx={tmp_path / spec.role / '1' / 'model.onnx'}"]
        opt, top = max(spec.preferred_batch_sizes), spec.max_batch_size
        for t in spec.inputs:
            dims = "x".join(map(str, t.dims))
            assert f"{t.name}:1x{dims}" in next(a for a in command if a.startswith("--minShapes="))
            assert f"{t.name}:{opt}x{dims}" in next(a for a in command if a.startswith("--optShapes="))
            assert f"{t.name}:{top}x{dims}" in next(a for a in command if a.startswith("--maxShapes="))
        assert "--fp16" in command and command[2] == f"--saveEngine={tmp_path / spec.role / '1' / 'model.plan'}"


def test_engine_build_without_onnx_names_the_missing_file(tmp_path):
    from export.tensorrt import build_engines

    with pytest.raises(FileNotFoundError, match="model.onnx missing"):
        build_engines(tmp_path, print_only=True)


def test_ensemble_wiring_is_consistent():
    """Every step input is produced earlier (or is the request), every ensemble output is produced."""
    configs = repository_configs("cpu")
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
@pytest.mark.parametrize("profile,platform", [("gpu", "onnxruntime_onnx"), ("gpu-trt", "tensorrt_plan")])
def test_gpu_profile_repository_has_no_python_adapters_for_onnx_models(tmp_path, profile, platform):
    from export.build_repository import ENGINE_SCRIPT, build_repository

    build_repository(tmp_path, profile=profile)
    for spec in MODEL_SPECS.values():
        assert (tmp_path / spec.role / "1" / "model.onnx").exists()
        assert not (tmp_path / spec.role / "1" / "model.py").exists()
        assert parse((tmp_path / spec.role / "config.pbtxt").read_text()).platform == platform
    for step in (PREPROCESS, ROUTER):
        assert (tmp_path / step.role / "1" / "model.py").exists() and (tmp_path / step.role / "1" / "cxr" / "specs.py").exists()
    script = tmp_path / ENGINE_SCRIPT
    if profile == "gpu-trt":  # relative paths: the repository is copied to the GPU host and built there
        commands = [line for line in script.read_text().splitlines() if line.startswith("trtexec ")]
        assert len(commands) == len(MODEL_SPECS) and str(tmp_path) not in script.read_text()
        for spec in MODEL_SPECS.values():
            assert any(f"--saveEngine={spec.role}/1/model.plan" in c for c in commands)
    else:
        assert not script.exists()
