"""Mask attention: act(BN(x) * avgpool(mask)), no parameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.layers import MaskAttention, MaskContext
from training.models import create_model


@pytest.mark.parametrize(
    "feature_shape,mask_size",
    [((2, 8, 32, 32), 256), ((2, 8, 8, 8), 256), ((1, 4, 128, 128), 256), ((3, 16, 16, 16), 16)],
)
def test_multiplies_by_the_pooled_mask_then_activates(feature_shape, mask_size):
    ctx = MaskContext()
    layer = MaskAttention(ctx, nn.ReLU6)
    x = torch.randn(feature_shape) * 4
    mask = (torch.rand(feature_shape[0], 1, mask_size, mask_size) > 0.5).float()
    with ctx.use(mask):
        y = layer(x)
    pooled = nn.functional.adaptive_avg_pool2d(mask, feature_shape[-2:])
    torch.testing.assert_close(y, torch.clamp(x * pooled, 0, 6))


def test_is_plain_activation_outside_a_mask_context():
    layer = MaskAttention(MaskContext(), nn.ReLU)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(layer(x), torch.relu(x))


def test_bad_masks_are_named():
    ctx = MaskContext()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        with ctx.use(torch.ones(2, 3, 8, 8)):
            pass
    layer = MaskAttention(ctx, nn.ReLU)
    with pytest.raises(ValueError, match="smaller than the feature map"):
        with ctx.use(torch.ones(1, 1, 10, 10)):
            layer(torch.ones(1, 2, 16, 16))


def test_odd_feature_sizes_pool_adaptively():
    ctx = MaskContext()
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :, :5] = 1
    with ctx.use(mask):
        pooled = ctx.pooled((3, 3))
    assert pooled.shape == (1, 1, 3, 3)
    torch.testing.assert_close(pooled, torch.nn.functional.adaptive_avg_pool2d(mask, (3, 3)))
    from training.layers.mask_attention import _adaptive_pool_matrix  # the ONNX-export form gives the same

    rows, cols = _adaptive_pool_matrix(10, 3, mask), _adaptive_pool_matrix(10, 3, mask)
    torch.testing.assert_close(rows @ mask @ cols.T, pooled)
    torch.testing.assert_close(pooled[0, 0, :, 0], torch.ones(3))
    torch.testing.assert_close(pooled[0, 0, :, 2], torch.zeros(3))


def test_mask_attention_adds_no_parameters():
    with_ma = create_model("mobilenetv2_mdconv_ma")
    without = create_model("mobilenetv2_mdconv")
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(with_ma) == count(without)
    assert sum(isinstance(m, MaskAttention) for m in with_ma.modules()) > 30


def test_mask_changes_the_output():
    model = create_model("mobilenetv2_mdconv_ma").eval()
    x = torch.randn(1, 1, 128, 128)
    full, half = torch.ones(1, 1, 128, 128), torch.ones(1, 1, 128, 128)
    half[..., :, 64:] = 0
    with torch.no_grad():
        assert not torch.allclose(model(x, full), model(x, half))
    with pytest.raises(ValueError, match="pass the lung mask"):
        model(x)
