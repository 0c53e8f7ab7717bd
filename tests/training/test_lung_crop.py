"""The lung-box crop (training.layers.lung_crop) and the classifier that reads it (resnet18_lungcrop)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.layers.lung_crop import crop, lung_box, uncrop
from training.models import create_model


def box_mask(rows: slice, cols: slice, size: int = 256) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[0, 0, rows, cols] = 1
    return mask


def normalised(pixel_edge: float, size: int = 256) -> float:
    return pixel_edge * 2 / size - 1


def test_box_holds_the_mask_widened_by_the_margin():
    (x0, y0, x1, y1), = lung_box(box_mask(slice(64, 192), slice(32, 224)), margin=0.1, trim=0.0).tolist()
    half_w, half_h = (normalised(224) - normalised(32)) / 2 * 1.2, (normalised(192) - normalised(64)) / 2 * 1.2
    assert (x0, x1) == pytest.approx((normalised(128) - half_w, normalised(128) + half_w), abs=1e-5)
    assert (y0, y1) == pytest.approx((-half_h, half_h), abs=1e-5)


def test_a_stray_fragment_does_not_widen_the_box_but_an_empty_mask_gives_the_frame():
    lungs = box_mask(slice(64, 192), slice(32, 224))
    fragment = lungs.clone()
    fragment[0, 0, 250:252, 250:252] = 1  # 4 pixels of 24,580: inside the 1 % trimmed at each end
    torch.testing.assert_close(lung_box(fragment), lung_box(lungs))
    assert lung_box(torch.zeros(2, 1, 256, 256)).tolist() == [[-1.0, -1.0, 1.0, 1.0]] * 2
    assert lung_box(box_mask(slice(0, 4), slice(0, 4))).tolist() == [[-1.0, -1.0, 1.0, 1.0]]  # < 2 % of the frame


def test_a_small_box_is_grown_to_the_minimum_size_about_its_centre():
    (x0, y0, x1, y1), = lung_box(box_mask(slice(112, 144), slice(60, 200)), min_size=0.35).tolist()
    assert (y0, y1) == pytest.approx((-0.35, 0.35), abs=1e-5) and x1 - x0 > 0.7


def test_cropping_the_whole_frame_is_area_pooling():
    image = torch.randn(2, 1, 64, 64)
    whole = torch.tensor([[-1.0, -1.0, 1.0, 1.0]] * 2)
    torch.testing.assert_close(crop(image, whole, (32, 32)), F.avg_pool2d(image, 2), rtol=1e-5, atol=1e-5)


def test_the_crop_shows_the_box_and_uncrop_puts_a_map_back_where_it_was():
    image = torch.zeros(1, 1, 256, 256)
    image[0, 0, 64:128, 128:192] = 1  # the box's top-right quarter
    box = torch.tensor([[0.0, -0.5, 0.5, 0.0]])  # pixels x 128-192, y 64-128
    out = crop(image, box, (32, 32))
    assert out.min() == pytest.approx(1.0, abs=1e-5) and out.shape == (1, 1, 32, 32)
    ramp = torch.linspace(-1, 1, 8).expand(1, 1, 8, 8).contiguous()  # a map over the box: x from left to right
    framed = uncrop(ramp, torch.tensor([[-1.0, -1.0, 1.0, 1.0]]), (8, 8))
    torch.testing.assert_close(framed, ramp, rtol=1e-5, atol=1e-5)
    left_half = uncrop(ramp, torch.tensor([[-1.0, -1.0, 0.0, 1.0]]), (8, 8))
    assert torch.all(left_half[..., 4:] == ramp[..., -1:])  # right of the box: the box's edge value


def test_lungcrop_classifier_reads_only_the_box_and_its_cam_keeps_the_logits():
    torch.manual_seed(0)
    model = create_model("resnet18_lungcrop").eval()
    mask = box_mask(slice(48, 208), slice(24, 232))
    image = torch.randn(1, 1, 256, 256)
    outside = image.clone()
    outside[..., :8, :] = 5.0  # change pixels far outside the lung box only
    with torch.no_grad():
        features = model.forward_features(image, mask)
        cam = model.class_activation_map(features, mask)
        torch.testing.assert_close(model(outside, mask), model(image, mask))
        torch.testing.assert_close(cam.mean(dim=(2, 3)), model(image, mask), rtol=1e-4, atol=1e-4)
    assert model.uses_mask and cam.shape == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="lung mask"):
        model(image)


@pytest.mark.slow
def test_lungcrop_exports_and_onnx_runtime_crops_as_torch(tmp_path):
    from export.onnx import export_any

    torch.manual_seed(0)
    model = create_model("resnet18_lungcrop").eval()
    masks = torch.cat([box_mask(slice(48, 208), slice(24, 232)), box_mask(slice(90, 200), slice(60, 150)),
                       torch.zeros(1, 1, 256, 256)])
    inputs = (torch.randn(3, 1, 256, 256), masks)
    with torch.no_grad():
        scale = max(1.0, float(model(*inputs).abs().max()))
    assert export_any(model, inputs, tmp_path / "lungcrop.onnx") <= 1e-4 * scale
