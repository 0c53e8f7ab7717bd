"""Model and pipeline specifications: the single source of tensor names, shapes and input settings.

Export (ONNX names), ``config.pbtxt`` rendering, the Triton python models and the client all read
these objects; nobody types a tensor name or input size twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from cxr.labels import LABELS

# Triton data type -> numpy dtype string.
NUMPY_DTYPES = {"TYPE_FP32": "float32", "TYPE_UINT8": "uint8", "TYPE_INT32": "int32", "TYPE_STRING": "object"}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; ``dims`` exclude the batch axis (-1 marks a variable axis)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str:
        return NUMPY_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that travels with a trained network.

    Attributes:
        name: registry name of the architecture (``create_model(name)``).
        role: Triton model name it is served under.
        input_size: ``(H, W)`` the network takes; images are letterboxed to it.
        mean, std: normalisation applied after scaling pixels to ``[0, 1]``.
        labels: output label order (classifiers only).
        inputs, outputs: named tensors of the exported graph.
        weights: file name under ``weights/``.
        max_batch_size, preferred_batch_sizes: Triton dynamic-batching settings.
        arch: keyword arguments for ``create_model``.
    """

    name: str
    role: str
    input_size: tuple[int, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: str
    mean: float = 0.5
    std: float = 0.25
    labels: tuple[str, ...] = ()
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000
    arch: dict = field(default_factory=dict)

    def feeds(self, *arrays) -> dict:
        """``arrays`` named by this graph's inputs, in order. Arrays past the last input are left out: callers
        pass the lung mask to every classifier, and one without mask attention takes none."""
        if len(arrays) < len(self.inputs):
            raise ValueError(f"{self.role} takes {[t.name for t in self.inputs]}, got {len(arrays)} arrays")
        return {t.name: a for t, a in zip(self.inputs, arrays)}

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)


def _by_name(tensors: tuple[TensorSpec, ...], name: str, owner: str) -> TensorSpec:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ValueError(f"{owner} has no tensor {name!r}; it has {[t.name for t in tensors]}")


SEG_SIZE = (256, 256)
CLS_SIZE = (256, 256)
CAM_SIZE = (CLS_SIZE[0] // 32, CLS_SIZE[1] // 32)

# U-Net with a MobileNetV2 encoder and a narrow decoder, distilled from the earlier lung_resunet18 (issue 19):
# 0.91 GMAC at 256 px against 3.48, test IoU 0.915 against 0.911 (README "Segmenter").
LUNG_SEGMENTATION = ModelSpec(
    name="lung_unet_mobilenetv2",
    role="lung_segmentation",
    input_size=SEG_SIZE,
    inputs=(TensorSpec("seg_image", "TYPE_FP32", (1, *SEG_SIZE)),),
    outputs=(TensorSpec("lung_mask", "TYPE_FP32", (1, *SEG_SIZE)),),
    weights="lung_unet_mobilenetv2.pt",
    arch={"encoder_name": "mobilenet_v2", "decoder_channels": (64, 32, 16, 16, 8)},
)

# The segmenter served before it (ResUNet-18, 3.48 GMAC): the teacher it was distilled from, and what the Flask
# baseline of "today's models" runs in `cxr bench` (benchmarks.baseline_server). Not served.
EARLIER_SEGMENTATION = replace(LUNG_SEGMENTATION, name="lung_resunet18", weights="lung_resunet18.pt",
                               arch={"encoder_name": "resnet18", "decoder_channels": (128, 64, 32, 16, 16)})

CLS_IMAGE = TensorSpec("cls_image", "TYPE_FP32", (1, *CLS_SIZE))
CLS_MASK = TensorSpec("lung_mask", "TYPE_FP32", (1, *SEG_SIZE))
LOGITS = TensorSpec("logits", "TYPE_FP32", (len(LABELS),))
PROBABILITIES = TensorSpec("probabilities", "TYPE_FP32", (len(LABELS),))
"""Calibrated class probabilities, in :data:`cxr.labels.LABELS` order (classifier and ensemble output)."""
CAM = TensorSpec("cam", "TYPE_FP32", (len(LABELS), *CAM_SIZE))


def classifier_spec(name: str, mask_attention: bool) -> ModelSpec:
    """The served first-stage classifier: image (+ the segmenter's raw lung mask, for mask attention) ->
    ``logits``, calibrated ``probabilities`` and the class-activation ``cam``."""
    return ModelSpec(
        name=name,
        role="cxr_classifier",
        input_size=CLS_SIZE,
        inputs=(CLS_IMAGE, CLS_MASK) if mask_attention else (CLS_IMAGE,),
        outputs=(
            LOGITS,
            PROBABILITIES,
            CAM,
        ),
        weights=f"{name}.pt",
        labels=LABELS,
    )


# ResNet-18 on the served 256 px input area-pooled to 128 px, without mask attention: best on val of the
# classifiers trained to convergence with one recipe (README "Classifier"), and cheaper in ONNX Runtime than the
# MobileNetV2 + MD-Conv served before it. The segmenter still runs for the gate, the lung mask output, the lung
# fraction and the cascade's stage 2.
CLASSIFIER = classifier_spec("resnet18_half", mask_attention=False)

STAGE2_SIZE = (128, 128)
STAGE2_LABELS = ("other_viral", "covid")

STAGE2_PROBABILITIES = TensorSpec("stage2_probabilities", "TYPE_FP32", (len(STAGE2_LABELS),))

# SE-ResNet18 at half width + MoEx (issue 19): 1.6 ms per image it sees against 16 for the SE-DenseNet169 served
# before it, val covid AUC 0.947 [0.866, 0.996] against 0.956 [0.875, 1.000] (README "Cascade and explanations").
COVID_STAGE2 = ModelSpec(
    name="seme_resnet18_slim",
    role="covid_stage2",
    input_size=STAGE2_SIZE,
    inputs=(TensorSpec("stage2_image", "TYPE_FP32", (1, *STAGE2_SIZE)),),
    outputs=(
        TensorSpec("stage2_logits", "TYPE_FP32", (len(STAGE2_LABELS),)),
        STAGE2_PROBABILITIES,
    ),
    weights="seme_resnet18_slim.pt",
    labels=STAGE2_LABELS,
    preferred_batch_sizes=(4, 8),
)
"""Cascade-SEMEnet stage 2: covid vs other viral on lung-only images; ``triage_router`` calls it (BLS) only
when the first stage finds viral/covid likely (see :mod:`cxr.cascade`)."""

# The stage 2 served before it: what the Flask baseline of "today's models" runs (benchmarks.baseline_server).
EARLIER_STAGE2 = replace(COVID_STAGE2, name="seme_densenet169", weights="seme_densenet169.pt")

MODEL_SPECS: dict[str, ModelSpec] = {s.role: s for s in (LUNG_SEGMENTATION, CLASSIFIER, COVID_STAGE2)}


@dataclass(frozen=True)
class StepSpec:
    """A python-backend step of the pipeline (no weights)."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 32
    instance_count: int = 1


IMAGE_BYTES = TensorSpec("image_bytes", "TYPE_STRING", (1,))

PREPROCESS = StepSpec(
    role="cxr_preprocess",
    inputs=(IMAGE_BYTES,),
    outputs=(LUNG_SEGMENTATION.inputs[0], CLS_IMAGE),
    instance_count=2,
)

# What the ensemble returns besides the classifier's probabilities and CAM (the router writes them).
LABEL = TensorSpec("label", "TYPE_STRING", (1,))
TRIAGE = TensorSpec("triage", "TYPE_STRING", (1,))  # JSON
LUNG_FRACTION = TensorSpec("lung_fraction", "TYPE_FP32", (1,))
LUNG_MASK = TensorSpec("lung_mask", "TYPE_UINT8", (1, *SEG_SIZE))  # post-processed

ROUTER = StepSpec(
    role="triage_router",
    inputs=(
        TensorSpec("class_probabilities", "TYPE_FP32", (len(LABELS),)),
        TensorSpec("class_cam", "TYPE_FP32", (len(LABELS), *CAM_SIZE)),
        TensorSpec("raw_lung_mask", "TYPE_FP32", (1, *SEG_SIZE)),
        CLS_IMAGE,  # the cascade's stage 2 is built from it (cxr.cascade)
    ),
    outputs=(
        LABEL,
        TRIAGE,
        LUNG_FRACTION,
        LUNG_MASK,
        PROBABILITIES,
        CAM,
    ),
    instance_count=2,  # one can wait on the stage-2 BLS call while the other routes the next batch
)
"""The last step returns every ensemble output (probabilities and CAM pass through it): Triton 2.51's
ensemble fails a request ("unexpected deadlock") when a tensor that feeds a later step is also an ensemble
output and the client does not ask for it."""

ENSEMBLE_NAME = "cxr_triage"
ENSEMBLE_INPUTS = (IMAGE_BYTES,)
ENSEMBLE_OUTPUTS = ROUTER.outputs
"""What ``cxr_triage`` returns: label, triage JSON, lung fraction, post-processed lung mask (uint8, in the
letterboxed network frame), probabilities in :data:`cxr.labels.LABELS` order and the class-activation map."""

# The ensemble's dataflow: (step role, {step input: ensemble tensor}, {step output: ensemble tensor}).
ENSEMBLE_STEPS = (
    ("cxr_preprocess", {"image_bytes": "image_bytes"}, {"seg_image": "seg_image", "cls_image": "cls_image"}),
    ("lung_segmentation", {"seg_image": "seg_image"}, {"lung_mask": "raw_lung_mask"}),
    (  # without mask attention the classifier does not wait for the segmenter: Triton runs the two side by side
        "cxr_classifier",
        {"cls_image": "cls_image", "lung_mask": "raw_lung_mask"} if CLS_MASK in CLASSIFIER.inputs else {"cls_image": "cls_image"},
        {"probabilities": "class_probabilities", "cam": "class_cam"},
    ),
    (
        "triage_router",
        {"class_probabilities": "class_probabilities", "class_cam": "class_cam", "raw_lung_mask": "raw_lung_mask",
         "cls_image": "cls_image"},
        {t.name: t.name for t in ROUTER.outputs},
    ),
)
