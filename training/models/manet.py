"""MANet's classification backbones (Xu et al., Neurocomputing 2021, Tables 2-3) with mask attention (MA).

The torchvision definitions the paper's counts refer to (ResNet34/50, plus ResNet18 for the seeded comparison; VGG16 with the 7x7 adaptive pool
and FC head, InceptionV3 without the auxiliary head), plus DenseNet121 for the MD-Conv paper's table.
MA multiplies a block's batch-normalised output by the lung mask average-pooled to that resolution,
right before the block's activation (:class:`training.layers.MaskedOutput` around the BN):

- ResNet: the stem, and once per residual block (its last BN, before the residual add and ReLU);
- VGG16 (no BN): every convolution, before its ReLU;
- InceptionV3: the stem convolutions, and in every Inception module the branch with the largest
  receptive field (e.g. the double 3x3 branch of module A, the 7x7-double branch of module C).

``resnet34_cbam`` / ``resnet50_cbam`` put timm's CBAM at the same points instead: the paper's comparison.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from timm.layers.cbam import CbamModule
from torch import nn

from training.layers import MaskContext, MaskedOutput
from training.layers.lung_crop import crop, lung_box, uncrop
from training.models.registry import register_model

# Inception modules: the child conv(s) that end the largest-receptive-field branch.
_INCEPTION_LARGEST_RF = {
    tvm.inception.InceptionA: ("branch3x3dbl_3",),
    tvm.inception.InceptionB: ("branch3x3dbl_3",),
    tvm.inception.InceptionC: ("branch7x7dbl_5",),
    tvm.inception.InceptionD: ("branch7x7x3_4",),
    tvm.inception.InceptionE: ("branch3x3dbl_3a", "branch3x3dbl_3b"),
}


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def mask_points(model: nn.Module) -> list[str]:
    """Names of the layers whose output MA multiplies, per the rules in the module docstring."""
    if isinstance(model, tvm.ResNet):
        points = ["bn1"]
        for name, block in model.named_modules():
            if isinstance(block, tvm.resnet.BasicBlock):
                points.append(f"{name}.bn2")
            elif isinstance(block, tvm.resnet.Bottleneck):
                points.append(f"{name}.bn3")
        return points
    if isinstance(model, tvm.VGG):
        return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    if isinstance(model, tvm.Inception3):
        points = [f"{n}.bn" for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")]
        for name, module in model.named_modules():
            for kind, branches in _INCEPTION_LARGEST_RF.items():
                if type(module) is kind:
                    points.extend(f"{name}.{b}.bn" for b in branches)
        return points
    raise TypeError(f"no mask-attention rule for {type(model).__name__}")


def add_cbam(backbone: nn.Module) -> nn.Module:
    """CBAM (timm ``CbamModule``) at the same points as MA: the comparison of MANet's Table 2 (adds parameters)."""
    for name in mask_points(backbone):
        layer = backbone.get_submodule(name)
        channels = layer.num_features if isinstance(layer, nn.BatchNorm2d) else layer.out_channels
        _replace(backbone, name, nn.Sequential(layer, CbamModule(channels)))
    return backbone


class MaskedClassifier(nn.Module):
    """A torchvision classifier over a CXR, optionally with mask attention.

    ``forward(x, mask)``: image ``(B, in_chans, H, W)`` and, with MA, the lung mask ``(B, 1, H', W')``.
    ``input_pool`` > 1 averages the image over ``input_pool`` x ``input_pool`` blocks first: the network runs at
    a fraction of the served resolution (area downsampling, the same in training and in the exported graph).
    ``lung_crop`` instead resamples the lung mask's bounding box to that fraction
    (:mod:`training.layers.lung_crop`): the network reads the lungs only, and needs the mask.
    """

    def __init__(self, backbone: nn.Module, mask_attention: bool, input_pool: int = 1, lung_crop: bool = False) -> None:
        super().__init__()
        if mask_attention and (input_pool > 1 or lung_crop):
            raise ValueError("input_pool / lung_crop are for classifiers without mask attention (their mask is not pooled)")
        self.input_pool = input_pool
        self.lung_crop = lung_crop
        self.mask_context = MaskContext() if mask_attention else None
        if mask_attention:
            for name in mask_points(backbone):
                _replace(backbone, name, MaskedOutput(backbone.get_submodule(name), self.mask_context))
        self.backbone = backbone

    @property
    def uses_mask(self) -> bool:
        return self.mask_context is not None or self.lung_crop

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._pool(x, mask)
        with self._mask(x, mask):
            return self.backbone(x)

    def _pool(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.lung_crop:
            if mask is None:
                raise ValueError("this model crops the lungs: pass the lung mask (B, 1, H, W)")
            return crop(x, lung_box(mask), (x.shape[-2] // self.input_pool, x.shape[-1] // self.input_pool))
        return F.avg_pool2d(x, self.input_pool) if self.input_pool > 1 else x

    def _mask(self, x: torch.Tensor, mask: torch.Tensor | None):
        if self.mask_context is None:
            return contextlib.nullcontext()
        if mask is None:
            raise ValueError("this model uses mask attention: pass the lung mask (B, 1, H, W)")
        return self.mask_context.use(mask.to(x.dtype))

    # The served classifier's interface (training.serving_graph.ClassifierGraph), for the ResNets: their head is
    # global average pooling + one linear layer, so the class-activation map is that layer at every position.
    def _resnet(self) -> tvm.ResNet:
        if not isinstance(self.backbone, tvm.ResNet):
            raise TypeError(f"features/CAM are defined for the ResNets here, not {type(self.backbone).__name__}")
        return self.backbone

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` image (+ lung mask with MA) -> ``(B, 512 or 2048, H/(32 input_pool), W/(32 input_pool))`` features."""
        net = self._resnet()
        x = self._pool(x, mask)
        with self._mask(x, mask):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        net = self._resnet()
        return net.fc(torch.flatten(net.avgpool(features), 1))

    @property
    def head(self) -> nn.Linear:
        """The linear layer after global average pooling."""
        return self._resnet().fc

    def class_activation_map(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CAM ``(B, num_classes, H/32, W/32)``: the linear head applied at every position (GAP+linear =>
        Grad-CAM). With ``input_pool`` the feature grid is coarser; the CAM is upsampled (bilinear, an integer
        factor) to the grid every served classifier gives, and keeps its spatial mean: the logits. With
        ``lung_crop`` the map over the lung box is placed back in the frame (the box from ``mask`` again), held at
        its edge value outside it, and shifted so that its mean is still the logits."""
        cam = torch.einsum("kc,bchw->bkhw", self.head.weight, features) + self.head.bias[None, :, None, None]
        if self.lung_crop:
            if mask is None:
                raise ValueError("this model crops the lungs: its CAM needs the lung mask to be placed in the frame")
            size = (cam.shape[-2] * self.input_pool, cam.shape[-1] * self.input_pool)
            full = uncrop(cam, lung_box(mask), size)
            return full - full.mean((2, 3), keepdim=True) + cam.mean((2, 3), keepdim=True)
        if self.input_pool > 1:
            cam = F.interpolate(cam, scale_factor=self.input_pool, mode="bilinear", align_corners=False)
        return cam

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM reads (the last feature map)."""
        return self._resnet().layer4


def _first_conv(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _build(factory, num_classes: int, in_chans: int, mask_attention: bool, cbam: bool = False, input_pool: int = 1,
           lung_crop: bool = False, **kwargs) -> MaskedClassifier:
    backbone = factory(weights=None, num_classes=num_classes, **kwargs)
    if cbam:
        add_cbam(backbone)
    if in_chans != 3:
        name = _first_conv(backbone)
        old = backbone.get_submodule(name)
        _replace(backbone, name, nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                                           bias=old.bias is not None))
    return MaskedClassifier(backbone, mask_attention, input_pool, lung_crop)


def _register(name: str, factory, mask_attention: bool, doc: str, cbam: bool = False, **kwargs) -> None:
    def entrypoint(num_classes: int = 5, in_chans: int = 1, **overrides) -> MaskedClassifier:
        return _build(factory, num_classes, in_chans, overrides.pop("mask_attention", mask_attention), cbam,
                      **{**kwargs, **overrides})

    entrypoint.__name__ = name
    entrypoint.__doc__ = doc
    register_model(entrypoint)


_INCEPTION = {"aux_logits": False, "init_weights": True, "transform_input": False}
for _arch, _factory, _kwargs in (
    ("resnet18", tvm.resnet18, {}),
    ("resnet34", tvm.resnet34, {}),
    ("resnet50", tvm.resnet50, {}),
    ("vgg16", tvm.vgg16, {}),
    ("inception_v3", tvm.inception_v3, _INCEPTION),
):
    _register(_arch, _factory, False, f"torchvision {_arch} (MANet Table 3 baseline)", **_kwargs)
    _register(f"{_arch}_ma", _factory, True, f"torchvision {_arch} with MANet mask attention", **_kwargs)
# The served 256 px input area-pooled to 128 px: a quarter of ResNet-18's MACs at 256 px (0.57 GMAC), less time
# than MobileNetV2 + MD-Conv's 0.39 GMAC in ONNX Runtime (dense convolutions run faster per MAC than depthwise).
_register("resnet18_half", tvm.resnet18, False, "torchvision resnet18 on the input average-pooled 2x (128 px from 256)",
          input_pool=2)
# The same network and MACs reading only the lungs: the segmenter's lung box resampled to 128 px.
_register("resnet18_lungcrop", tvm.resnet18, False,
          "torchvision resnet18 on the lung mask's bounding box resampled to 128 px (from the 256 px input)",
          input_pool=2, lung_crop=True)
_register("densenet121", tvm.densenet121, False, "torchvision DenseNet121 (MD-Conv paper Table 7 baseline)")
for _arch, _factory in (("resnet34", tvm.resnet34), ("resnet50", tvm.resnet50)):
    _register(f"{_arch}_cbam", _factory, False, f"torchvision {_arch} with CBAM at the MA points (MANet Table 2)",
              cbam=True)
