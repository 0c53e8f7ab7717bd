"""Render every ``config.pbtxt`` of the repository from :mod:`cxr.specs` (tritonclient's ModelConfig protobuf).

Four profiles come from the same specs:

- ``cpu``: the ONNX models run in python-backend adapters with ONNX Runtime (this machine's Triton wheel
  has no onnxruntime backend).
- ``cpu-int8``: the same adapters on the INT8 (QDQ) graphs written by :mod:`export.quantize`
  (``model.int8.onnx``; ``benchmarks.int8`` measures its speed and accuracy against FP32).
- ``gpu``: the stock ``onnxruntime_onnx`` platform on ``KIND_GPU`` with the TensorRT execution
  accelerator in FP16 and an engine cache (for the NGC Triton container; not runnable here).
- ``gpu-trt``: ``tensorrt_plan`` engines (``model.plan``) that :mod:`export.tensorrt` builds on the GPU host
  from the same ONNX, with optimisation profiles matching the dynamic batcher (not runnable here).
"""
from __future__ import annotations


from tritonclient.grpc import model_config_pb2 as mc


from cxr.specs import (
    COVID_STAGE2,
    ENSEMBLE_INPUTS,
    ENSEMBLE_NAME,
    ENSEMBLE_OUTPUTS,
    ENSEMBLE_STEPS,
    MODEL_SPECS,
    PREPROCESS,
    PROBABILITIES,
    ROUTER,
    ModelSpec,
    StepSpec,
    TensorSpec,
)

# Request priority levels of every dynamic batcher: 1 = urgent work (DICOM Priority HIGH at the gateway),
# 2 = everything else (the default). Lower is served first.
PRIORITY_LEVELS, DEFAULT_PRIORITY = 2, 2
PROFILES = ("cpu", "cpu-int8", "gpu", "gpu-trt")
ONNX_FILES = {"cpu": "model.onnx", "cpu-int8": "model.int8.onnx"}
INT8_ROLES = ("lung_segmentation", "cxr_classifier")  # quantized in cpu-int8; other models stay FP32
PLAN_FILE = "model.plan"
LABELS_FILE = "labels.txt"


def _tensors(message_type, tensors: tuple[TensorSpec, ...], labelled: tuple[str, ...] = ()):
    out = []
    for t in tensors:
        msg = message_type(name=t.name, data_type=mc.DataType.Value(t.dtype), dims=list(t.dims))
        if t.name in labelled:
            msg.label_filename = LABELS_FILE
        out.append(msg)
    return out


def _params(config: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = value


def model_config(spec: ModelSpec, profile: str, threads: int = 2) -> mc.ModelConfig:
    """Config of an ONNX model for ``profile`` (one of :data:`PROFILES`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    config = mc.ModelConfig(
        name=spec.role,
        max_batch_size=spec.max_batch_size,
        input=_tensors(mc.ModelInput, spec.inputs),
        output=_tensors(mc.ModelOutput, spec.outputs, labelled=(PROBABILITIES.name,) if spec.labels else ()),
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(spec.preferred_batch_sizes),
            max_queue_delay_microseconds=spec.max_queue_delay_us,
            priority_levels=PRIORITY_LEVELS,
            default_priority_level=DEFAULT_PRIORITY,
        ),
    )
    if profile in ONNX_FILES:
        config.backend = "python"
        config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
        onnx_file = ONNX_FILES[profile] if spec.role in INT8_ROLES else ONNX_FILES["cpu"]
        _params(config, {"onnx_file": onnx_file, "intra_op_threads": str(threads)})
    elif profile == "gpu-trt":
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
        config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    else:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
        trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
        trt.parameters["trt_engine_cache_enable"] = "true"
        trt.parameters["trt_engine_cache_path"] = "/tmp/trt_engine_cache"
    return config


def step_config(step: StepSpec, params: dict[str, str] | None = None) -> mc.ModelConfig:
    """Config of a python-backend pipeline step."""
    config = mc.ModelConfig(
        name=step.role,
        backend="python",
        max_batch_size=step.max_batch_size,
        input=_tensors(mc.ModelInput, step.inputs),
        output=_tensors(mc.ModelOutput, step.outputs),
        dynamic_batching=mc.ModelDynamicBatching(priority_levels=PRIORITY_LEVELS, default_priority_level=DEFAULT_PRIORITY),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=step.instance_count)],
    )
    _params(config, params or {})
    return config


def ensemble_config(max_batch_size: int = 32) -> mc.ModelConfig:
    """The ``cxr_triage`` ensemble: only dataflow, from :data:`cxr.specs.ENSEMBLE_STEPS`."""
    config = mc.ModelConfig(
        name=ENSEMBLE_NAME,
        platform="ensemble",
        max_batch_size=max_batch_size,
        input=_tensors(mc.ModelInput, ENSEMBLE_INPUTS),
        output=_tensors(mc.ModelOutput, ENSEMBLE_OUTPUTS),
    )
    for role, inputs, outputs in ENSEMBLE_STEPS:
        config.ensemble_scheduling.step.append(
            mc.ModelEnsembling.Step(model_name=role, model_version=-1, input_map=inputs, output_map=outputs)
        )
    return config


def repository_configs(profile: str, threads: int = 2) -> dict[str, mc.ModelConfig]:
    """Every model's config for ``profile``, keyed by model name (versions are pinned by
    :func:`export.release.write_configs`; the model versions a release reports are in its ``release.json``)."""
    configs = {spec.role: model_config(spec, profile, threads) for spec in MODEL_SPECS.values()}
    configs[PREPROCESS.role] = step_config(PREPROCESS)
    configs[ROUTER.role] = step_config(
        ROUTER, {"thresholds_file": "thresholds.json", "stage2_model": COVID_STAGE2.role}
    )
    configs[ENSEMBLE_NAME] = ensemble_config()
    return configs
