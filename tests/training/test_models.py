"""Every registered model: forward and backward with the expected shapes; architecture facts from the papers."""
from __future__ import annotations

import pytest
import torch
from timm.layers import MixedConv2d

from training.models import create_model, list_models

CASES = {
    "mobilenetv2_mdconv_ma": ((2, 1, 128, 128), True, (2, 5)),
    "mobilenetv2_mdconv": ((2, 1, 128, 128), False, (2, 5)),
    "mobilenetv2": ((2, 1, 128, 128), False, (2, 5)),
    "lung_resunet18": ((2, 1, 128, 128), False, (2, 1, 128, 128)),
    "lung_resunet34": ((1, 1, 64, 64), False, (1, 1, 64, 64)),
    "lung_unet_mobilenetv2": ((2, 1, 64, 64), False, (2, 1, 64, 64)),
    "resnet18": ((2, 1, 64, 64), False, (2, 5)),
    "resnet18_ma": ((2, 1, 64, 64), True, (2, 5)),
    "resnet18_half": ((2, 1, 128, 128), False, (2, 5)),
    "resnet18_lungcrop": ((2, 1, 128, 128), True, (2, 5)),
    "mobilenetv2_mdconv_resnet18_half": ((2, 1, 128, 128), False, (2, 5)),
    "resnet18_half_x2": ((2, 1, 128, 128), False, (2, 5)),
    "efficientnet_b0": ((2, 1, 64, 64), False, (2, 5)),
    "resnet34": ((2, 1, 64, 64), False, (2, 5)),
    "resnet34_ma": ((2, 1, 64, 64), True, (2, 5)),
    "resnet50": ((2, 1, 64, 64), False, (2, 5)),
    "resnet50_ma": ((2, 1, 64, 64), True, (2, 5)),
    "vgg16": ((1, 1, 224, 224), False, (1, 5)),  # 224: the 7x7 adaptive pool is then exportable
    "vgg16_ma": ((1, 1, 224, 224), True, (1, 5)),
    "inception_v3": ((2, 1, 96, 96), False, (2, 5)),  # torchvision's InceptionV3 needs >= 75 px
    "inception_v3_ma": ((2, 1, 96, 96), True, (2, 5)),
    "densenet121": ((2, 1, 64, 64), False, (2, 5)),
    "resnet34_cbam": ((2, 1, 64, 64), False, (2, 5)),
    "resnet50_cbam": ((2, 1, 64, 64), False, (2, 5)),
    "seme_resnet50": ((2, 1, 64, 64), False, (2, 3)),
    "seme_densenet169": ((2, 1, 64, 64), False, (2, 2)),
    "seme_densenet121": ((2, 1, 64, 64), False, (2, 2)),
    "seme_resnet18_slim": ((2, 1, 64, 64), False, (2, 2)),
    "dpn92": ((2, 1, 64, 64), False, (2, 5)),
    "dpn92_se": ((2, 1, 64, 64), False, (2, 5)),
    "dpn92_gc": ((2, 1, 64, 64), False, (2, 5)),
    "mobilenetv2_mdconv_s2": ((2, 1, 64, 64), False, (2, 5)),
    "mobilenetv3": ((2, 1, 64, 64), False, (2, 5)),
    "mobilenetv3_mdconv": ((2, 1, 64, 64), False, (2, 5)),
    "mobilenetv3_mdconv_s2": ((2, 1, 64, 64), False, (2, 5)),
}


def test_every_registered_model_has_a_case():
    assert sorted(CASES) == list_models()


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward(name):
    shape, needs_mask, expected = CASES[name]
    model = create_model(name)
    args = (torch.randn(shape),) + ((torch.ones(shape[0], 1, *shape[-2:]),) if needs_mask else ())
    out = model(*args)
    assert tuple(out.shape) == expected
    out.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mdconv_only_in_stride16_groups():
    model = create_model("mobilenetv2_mdconv_ma")
    groups = {name.split(".")[2] for name, m in model.named_modules() if isinstance(m, MixedConv2d)}
    assert groups == {"3", "4"}
    mixed = next(m for m in model.modules() if isinstance(m, MixedConv2d))
    assert sorted(c.kernel_size[0] for c in mixed.values()) == [3, 5]
    assert not any(isinstance(m, MixedConv2d) for m in create_model("mobilenetv2").modules())


@pytest.mark.parametrize("name", ["mobilenetv2_mdconv", "resnet18", "resnet18_ma"])
def test_classifier_cam_is_the_linear_head_at_every_position(name):
    model = create_model(name).eval()
    image, mask = torch.randn(2, 1, 128, 128), (torch.rand(2, 1, 128, 128) > 0.5).float()
    with torch.no_grad():
        features = model.forward_features(image, mask)
        cam = model.class_activation_map(features)
        torch.testing.assert_close(cam.mean(dim=(2, 3)), model.forward_head(features), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.forward_head(features), model(image, mask))  # the served graph = the model
    assert features.shape[-1] == 128 // 32 and model.cam_layer is not None and model.head.out_features == 5


def test_resnet18_half_sees_the_input_area_pooled_to_half():
    model = create_model("resnet18_half").eval()
    image = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        features = model.forward_features(image)
        inner = create_model("resnet18")
        inner.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(image), inner.eval()(torch.nn.functional.avg_pool2d(image, 2)))
        cam = model.class_activation_map(features)  # on the served grid (input / 32), its mean still the logits
        torch.testing.assert_close(cam.mean(dim=(2, 3)), model(image), rtol=1e-4, atol=1e-4)
    assert features.shape[-1] == 128 // 64 and cam.shape == (2, 5, 128 // 32, 128 // 32)


def test_ensemble_is_the_mean_of_its_members_and_its_cam_keeps_the_logits():
    """The gate reads the logits back from the CAM's spatial mean: that must hold for the members' mean too."""
    model = create_model("mobilenetv2_mdconv_resnet18_half").eval()
    image = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        members = [m(image) for m in model.members.values()]
        torch.testing.assert_close(model(image), torch.stack(members).mean(0))
        features = model.forward_features(image)
        cam = model.class_activation_map(features)
        torch.testing.assert_close(cam.mean(dim=(2, 3)), model.forward_head(features), rtol=1e-4, atol=1e-4)
    assert cam.shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"\[.a.\] use mask attention"):
        from training.models.ensemble import ClassifierEnsemble

        ClassifierEnsemble({"a": "mobilenetv2_mdconv_ma"})


def test_an_ensemble_of_seeds_keys_its_members_apart_and_names_their_architecture():
    model = create_model("resnet18_half_x2")
    assert list(model.members) == ["seed_a", "seed_b"]
    assert model.architectures == {"seed_a": "resnet18_half", "seed_b": "resnet18_half"}
    single = create_model("resnet18_half").state_dict()
    assert set(model.state_dict()) == {f"members.{key}.{k}" for key in ("seed_a", "seed_b") for k in single}


def test_resunet_rejects_sizes_not_divisible_by_stride():
    model = create_model("lung_resunet18")
    assert model.output_stride == 32 and len(model.encoder.out_channels) == 6
    with pytest.raises(ValueError, match=r"try \(256, 256\)"):
        model(torch.randn(1, 1, 250, 250))


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", ["resnet34", "resnet50", "vgg16", "inception_v3"])
def test_manet_mask_attention_adds_no_parameters_and_uses_the_mask(name):
    from training.layers import MaskedOutput

    plain, masked = create_model(name), create_model(f"{name}_ma")
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in masked.parameters())
    assert any(isinstance(m, MaskedOutput) for m in masked.modules())
    masked.eval()
    size = 96 if name == "inception_v3" else 64
    x = torch.randn(1, 1, size, size)
    left = torch.zeros(1, 1, size, size)
    left[..., : size // 2] = 1
    with torch.no_grad():
        assert not torch.allclose(masked(x, torch.ones_like(left)), masked(x, left))
    with pytest.raises(ValueError, match="pass the lung mask"):
        masked(x)


def test_mask_attention_points_follow_the_paper():
    from training.models.manet import mask_points

    resnet50 = create_model("resnet50").backbone
    points = mask_points(resnet50)
    assert points[0] == "bn1" and len(points) == 1 + 16 and all(p.endswith(".bn3") for p in points[1:])  # once per bottleneck
    inception = mask_points(create_model("inception_v3").backbone)
    assert "Mixed_5b.branch3x3dbl_3.bn" in inception and "Mixed_6b.branch7x7dbl_5.bn" in inception
    assert "Mixed_5b.branch1x1.bn" not in inception  # only the largest receptive field of each module


@pytest.mark.parametrize("name,blocks", [("seme_resnet50", 16), ("seme_densenet169", 82), ("seme_densenet121", 58), ("seme_resnet18_slim", 8), ("dpn92_se", 30)])
def test_squeeze_excitation_in_every_block_with_reduction_16(name, blocks):
    from timm.layers import SEModule

    se = [m for m in create_model(name).modules() if isinstance(m, SEModule)]
    assert len(se) == blocks  # bottlenecks 3+4+6+3; dense layers 6+12+32+32 / 6+12+24+16; basic blocks 2+2+2+2; dual-path blocks 3+4+20+3
    assert all(abs(m.fc1.out_channels - m.fc1.in_channels / 16) <= 1 for m in se)


def test_gcnet_blocks_in_every_dual_path_block():
    from timm.layers import GlobalContext

    assert sum(isinstance(m, GlobalContext) for m in create_model("dpn92_gc").modules()) == 30


def test_moex_exchanges_moments_only_in_training():
    from training.layers.moex import moex_loss

    model = create_model("seme_resnet50")
    x, perm = torch.randn(4, 1, 64, 64), torch.tensor([1, 0, 3, 2])
    model.train()
    torch.manual_seed(0)
    with model.moex.exchange(perm):
        mixed = model(x)
    features = []
    hook = model.moex.register_forward_hook(lambda m, i, o: features.append(o))  # returns None: output unchanged
    with model.moex.exchange(perm):
        model(x)
    hook.remove()
    out = features[0]  # after MoEx: sample 0 carries sample 1's per-position moments
    stem = model.backbone.conv1[0](x)
    torch.testing.assert_close(out[0].mean(0), stem[1].mean(0), rtol=1e-4, atol=1e-4)
    model.eval()
    with torch.no_grad(), model.moex.exchange(perm):
        assert torch.equal(model.moex(stem), stem)
    target = torch.tensor([0, 1, 2, 0])
    loss = moex_loss(mixed, target, perm, lam=0.7)
    expected = 0.7 * torch.nn.functional.cross_entropy(mixed, target) + 0.3 * torch.nn.functional.cross_entropy(mixed, target[perm])
    torch.testing.assert_close(loss, expected)


def test_mdconv_ablation_and_v3_place_mixed_kernels_where_documented():
    s2 = create_model("mobilenetv2_mdconv_s2")
    groups = {name.split(".")[2] for name, m in s2.named_modules() if isinstance(m, MixedConv2d)}
    assert groups == {"1", "2", "3", "5"}
    v3 = create_model("mobilenetv3_mdconv")
    assert {name.split(".")[1] for name, m in v3.named_modules() if isinstance(m, MixedConv2d)} == {"3", "4"}
    assert not any(isinstance(m, MixedConv2d) for m in create_model("mobilenetv3").modules())
    v3_s2 = create_model("mobilenetv3_mdconv_s2")
    assert {name.split(".")[1] for name, m in v3_s2.named_modules() if isinstance(m, MixedConv2d)} == {"1", "2", "3", "5"}


def test_cbam_sits_where_mask_attention_does_and_adds_parameters():
    from timm.layers.cbam import CbamModule

    from training.models.manet import mask_points

    cbam, plain = create_model("resnet50_cbam"), create_model("resnet50")
    assert sum(isinstance(m, CbamModule) for m in cbam.modules()) == len(mask_points(plain.backbone)) == 17
    assert sum(p.numel() for p in cbam.parameters()) > sum(p.numel() for p in plain.parameters())
