"""Explanations for one image: Grad-CAM (pytorch-grad-cam) or LIME (lime), written as an overlay PNG.

    cxr explain FILE --method gradcam|lime --out overlay.png [--target LABEL]

The image goes through the served preprocessing (``cxr.preprocess``) and the shipped models in PyTorch: the
segmenter gives the lung mask (a mask-attention classifier takes it; the served one ignores it). Grad-CAM is
taken on the output of the last convolution stage (``conv_head`` -> ``bn2`` + activation, the features the head pools); for this
GAP + linear head it equals the served class-activation map up to ReLU, scale and upsampling (a test checks). LIME perturbs SLIC superpixels of the letterboxed image with the lung mask
held fixed, and outlines the superpixels that support the class most.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cxr.labels import LABELS
from cxr.pixels import decode_image
from cxr.preprocess import PrepareInput
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION
from training.serving_graph import serving_graph

METHODS = ("gradcam", "lime")


class _WithMask(nn.Module):
    """The classifier as a one-input module (the libraries call ``model(x)``), lung mask fixed."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.mask.expand(x.shape[0], -1, -1, -1))


@dataclass
class Explanation:
    method: str
    label: str
    probabilities: dict[str, float]
    overlay: np.ndarray  # (H, W, 3) uint8 RGB in the letterboxed network frame
    heatmap: np.ndarray  # (H, W) float in [0, 1]: Grad-CAM, or LIME's supporting superpixels
    lung_mask: np.ndarray  # (H, W) bool: the shipped segmenter's lungs, in the same frame


def load_models(weights_dir: str | Path | None = None,
                classifier_weights: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
    """The shipped segmenter (binary-mask graph) and classifier, in eval mode; ``classifier_weights`` names a
    candidate classifier's file instead (the segmenter stays the shipped one), built as the architecture its
    metadata names (a candidate may be another network on the same input, e.g. ``resnet18`` for ``resnet18_half``)."""
    segmenter = serving_graph(LUNG_SEGMENTATION, weights_dir and Path(weights_dir) / LUNG_SEGMENTATION.weights)
    spec = CLASSIFIER
    if classifier_weights:
        meta = torch.load(classifier_weights, map_location="cpu", weights_only=True).get("meta", {})
        spec = replace(CLASSIFIER, name=meta.get("model", CLASSIFIER.name))
    classifier_weights = classifier_weights or (weights_dir and Path(weights_dir) / CLASSIFIER.weights)
    classifier = serving_graph(spec, classifier_weights and Path(classifier_weights)).model.eval()
    return segmenter, classifier


def explain(data: bytes, method: str = "gradcam", target: str | None = None, lime_samples: int = 300,
            models: tuple[nn.Module, nn.Module] | None = None, seed: int = 0) -> Explanation:
    """Explain the classifier's answer for the encoded image ``data``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    segmenter, classifier = models or load_models()
    pixels = decode_image(data).pixels
    seg_in = torch.from_numpy(PrepareInput(LUNG_SEGMENTATION)(pixels)[None])
    prepare = PrepareInput(CLASSIFIER)
    unit = prepare.unit(pixels)[0]
    cls_in = torch.from_numpy(prepare.normalise(unit)[None])
    with torch.no_grad():
        mask = segmenter(seg_in)
        probs = torch.softmax(classifier(cls_in, mask), 1)[0].numpy()
    label = target or LABELS[int(probs.argmax())]
    if label not in LABELS:
        raise ValueError(f"unknown target {label!r}; expected one of {LABELS}")
    wrapped = _WithMask(classifier, mask).eval()
    gray = (np.clip(unit, 0, 1) * 255).astype(np.uint8)
    if method == "gradcam":
        heat, overlay = _gradcam(wrapped, classifier, cls_in, LABELS.index(label), gray)
    else:
        heat, overlay = _lime(wrapped, prepare, gray, LABELS.index(label), lime_samples, seed)
    return Explanation(method, label, dict(zip(LABELS, map(float, probs))), overlay, heat, mask[0, 0].numpy() > 0)


def _gradcam(wrapped: nn.Module, classifier: nn.Module, x: torch.Tensor, index: int, gray: np.ndarray):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=wrapped, target_layers=[classifier.cam_layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255
    return heat, show_cam_on_image(rgb, heat, use_rgb=True)


def _lime(wrapped: nn.Module, prepare: PrepareInput, gray: np.ndarray, index: int, samples: int, seed: int):
    from lime import lime_image
    from skimage.segmentation import mark_boundaries

    def classify(batch: np.ndarray) -> np.ndarray:
        x = np.stack([prepare.normalise(b[..., 0].astype(np.float32) / 255) for b in batch])
        with torch.no_grad():
            return torch.softmax(wrapped(torch.from_numpy(x)), 1).numpy()

    explainer = lime_image.LimeImageExplainer(random_state=seed)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    result = explainer.explain_instance(rgb, classify, labels=(index,), top_labels=None, hide_color=0,
                                        num_samples=samples, batch_size=32, random_seed=seed)
    image, support = result.get_image_and_mask(index, positive_only=True, num_features=8, hide_rest=False)
    overlay = (mark_boundaries(image / 255.0, support, color=(1, 0.8, 0)) * 255).astype(np.uint8)
    return support.astype(np.float32), overlay


def write_png(explanation: Explanation, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.cvtColor(explanation.overlay, cv2.COLOR_RGB2BGR)
    text = f"{explanation.method}: {explanation.label} {explanation.probabilities[explanation.label]:.2f}"
    cv2.putText(image, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), image):
        raise ValueError(f"cannot write {path}")
    return path
