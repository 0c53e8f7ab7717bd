"""Grad-CAM and LIME explanations of the shipped classifier on a real image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.labels import LABELS


@pytest.fixture(scope="module")
def models():
    from training.explain import load_models

    return load_models()


@pytest.fixture(scope="module")
def covid_jpeg(test_rows):
    return next(r for r in test_rows if r.label == "covid").image.read_bytes()


def test_gradcam_equals_the_served_class_activation_map(models, covid_jpeg):
    """For a GAP + linear head Grad-CAM is ReLU(CAM - bias) up to scale: the two must agree."""
    from cxr.pixels import decode_image
    from cxr.preprocess import PrepareInput
    from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION
    from training.explain import explain

    result = explain(covid_jpeg, "gradcam", models=models)
    assert result.heatmap.shape == (256, 256) and 0 <= result.heatmap.min() and result.heatmap.max() <= 1
    assert result.overlay.shape == (256, 256, 3) and result.label == max(result.probabilities, key=result.probabilities.get)

    segmenter, classifier = models
    pixels = decode_image(covid_jpeg).pixels
    with torch.no_grad():
        mask = segmenter(torch.from_numpy(PrepareInput(LUNG_SEGMENTATION)(pixels)[None]))
        features = classifier.forward_features(torch.from_numpy(PrepareInput(CLASSIFIER)(pixels)[None]), mask)
        cam = classifier.class_activation_map(features)[0, LABELS.index(result.label)]
        cam = cam - classifier.head.bias[LABELS.index(result.label)]
        served = torch.nn.functional.interpolate(cam.relu()[None, None], size=(256, 256), mode="bilinear")[0, 0]
    corr = np.corrcoef(served.numpy().ravel(), result.heatmap.ravel())[0, 1]
    assert corr >= 0.95, corr
    lungs = mask[0, 0].numpy() > 0
    # The served classifier has no mask attention (it did not help accuracy: README "Classifier"), so its evidence
    # is not confined to the lungs (with mask attention >= 60 % of this map lay on them); it still weighs the lungs
    # above their share of the frame.
    share = result.heatmap[lungs].sum() / result.heatmap.sum()
    assert share > lungs.mean(), (share, lungs.mean())


def test_lime_outlines_supporting_superpixels(models, covid_jpeg):
    from training.explain import explain

    result = explain(covid_jpeg, "lime", target="covid", lime_samples=64, models=models)
    assert result.label == "covid" and result.overlay.shape == (256, 256, 3)
    assert 0 < result.heatmap.mean() < 1  # some superpixels, not the whole image


def test_cli_writes_the_overlay_and_names_bad_requests(tmp_path, covid_jpeg, capsys):
    import cv2

    from cli.main import main

    image = tmp_path / "x.jpg"
    image.write_bytes(covid_jpeg)
    assert main(["explain", str(image), "--method", "gradcam", "--out", str(tmp_path / "o.png")]) == 0
    assert cv2.imread(str(tmp_path / "o.png")).shape == (256, 256, 3)
    assert main(["explain", str(image), "--target", "flu", "--out", str(tmp_path / "p.png")]) == 2
    assert "unknown target 'flu'" in capsys.readouterr().err


def test_lung_evidence_reports_the_shipped_classifier_weighing_the_lungs(data_dir):
    from training.explain_lungs import lung_evidence

    result = lung_evidence([str(data_dir / "manifest.csv")], "test", limit=8)
    pooled = result["pooled"]
    assert pooled["n"] == sum(s["n"] for s in result["by_label"].values()) and 0 < pooled["n"] <= 8
    assert 0 <= pooled["mean_share"] <= 1 and 0 < pooled["mean_lung_fraction"] < 1
    # The shipped weights were chosen partly on this (README "Classifier"): their evidence lies on the lungs more
    # than the lungs' share of the frame on most images.
    assert pooled["mean_share"] > pooled["mean_lung_fraction"] and pooled["lung_weighted"] > 0.5


def test_a_candidate_classifier_is_built_as_the_architecture_its_weights_name(tmp_path, covid_jpeg):
    """``load_models(classifier_weights=...)`` of a ``resnet18`` file (256 px, no input pooling) must not run it as
    the served ``resnet18_half`` (same keys, input pooled 2x): explanations of a candidate explain that candidate."""
    from training.common import save_weights
    from training.explain import explain, load_models
    from training.models import create_model

    candidate = create_model("resnet18", num_classes=len(LABELS))
    save_weights(candidate, tmp_path / "resnet18.pt", {"model": "resnet18", "temperature": 1.0})
    segmenter, classifier = load_models(classifier_weights=tmp_path / "resnet18.pt")
    assert classifier.input_pool == 1
    assert explain(covid_jpeg, "gradcam", models=(segmenter, classifier)).heatmap.shape == (256, 256)
