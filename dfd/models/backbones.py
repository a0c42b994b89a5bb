"""ResNet/ResNeXt backbones from torchvision, by name."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .errors import WeightsError


@dataclass(frozen=True)
class BackboneSpec:
    builder: Callable[..., nn.Module]
    channels: tuple[int, int, int, int]  # C2..C5 widths


def resnext101_32x4d(*, weights=None, **kwargs) -> nn.Module:
    """ResNeXt-101 32x4d (groups 32, width 4 per group): mmdetection's X101 of the Faster/Mask/Cascade
    R-CNN and RepPoints teachers. torchvision publishes no ImageNet weights for it: train from scratch
    or load a converted checkpoint."""
    if weights is not None:
        raise WeightsError("resnext101_32x4d has no torchvision weights; set backbone_weights=null and load a checkpoint")
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 23, 3], groups=32,
                                            width_per_group=4, **kwargs)


_BASIC = (64, 128, 256, 512)
_BOTTLENECK = (256, 512, 1024, 2048)

BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(torchvision.models.resnet18, _BASIC),
    "resnet34": BackboneSpec(torchvision.models.resnet34, _BASIC),
    "resnet50": BackboneSpec(torchvision.models.resnet50, _BOTTLENECK),
    "resnet101": BackboneSpec(torchvision.models.resnet101, _BOTTLENECK),
    "resnext101_32x4d": BackboneSpec(resnext101_32x4d, _BOTTLENECK),
    "resnext101_32x8d": BackboneSpec(torchvision.models.resnext101_32x8d, _BOTTLENECK),
    "resnext101_64x4d": BackboneSpec(torchvision.models.resnext101_64x4d, _BOTTLENECK),
}

class FrozenStatsBatchNorm2d(nn.Module):
    """BatchNorm with frozen statistics and trained affine parameters: mmdetection's ResNet with
    ``norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True``.

    y = (x − running_mean) / sqrt(running_var + eps) · weight + bias, the statistics never updated.
    Its state-dict names are ``nn.BatchNorm2d``'s (ImageNet weights load), but it is not a BatchNorm
    subclass, so SyncBatchNorm conversion leaves it alone.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


# The trunk's normalisation: bn_eval (mmdetection: statistics frozen, affine trained), frozen_bn
# (torchvision's detection models: both frozen), bn (both trained: for training from scratch).
NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "bn_eval": FrozenStatsBatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "bn": nn.BatchNorm2d,
}
NORMS = tuple(NORM_LAYERS)


class DeformConv3x3(nn.Module):
    """A 3×3 deformable convolution (DCN v1, one offset group) with its own offset predictor, as
    mmdetection's ``DeformConv2dPack`` (``dcn=dict(type='DCN', deform_groups=1)``).

    offsets = conv_offset(x) (a 3×3 conv to 2·3·3 channels, zero-initialised: it starts as a plain
    convolution); y = DeformConv2d(x, offsets; weight). Parameter names are mmdetection's
    (``weight``, ``conv_offset.weight``, ``conv_offset.bias``), so its checkpoints map by name.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None
        self.conv_offset = nn.Conv2d(conv.in_channels, 2 * 3 * 3, 3, stride=conv.stride, padding=conv.padding,
                                     dilation=conv.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sampling runs in fp32 and the output comes back in ``x``'s dtype: torchvision's CUDA autocast does
        the same, and its CPU kernel has no bf16 (``trainer.amp=bf16`` on a CPU would fail)."""
        offsets = self.conv_offset(x)
        with torch.autocast(x.device.type, enabled=False):
            y = torchvision.ops.deform_conv2d(x.float(), offsets.float(), self.weight.float(), None, self.stride,
                                              self.padding, self.dilation)
        return y.to(x.dtype)


def add_deformable_convs(trunk: nn.Module, stages: tuple[int, ...]) -> None:
    """Make the 3×3 convolution of every block of ``stages`` (2–4: layer2–layer4, i.e. c3–c5) deformable."""
    for stage in stages:
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"dcn stage {stage} is not one of 1..4 (layer1..layer4)")
        for block in getattr(trunk, f"layer{stage}"):
            conv = block.conv2
            if conv.kernel_size != (3, 3):
                raise ValueError(f"layer{stage} has no 3x3 conv2 to make deformable")
            block.conv2 = DeformConv3x3(conv)


def resolve_torchvision_weights(name: str, builder: Callable[..., nn.Module] | None = None, key: str = "weights"):
    """Turn ``"ResNet50_Weights.IMAGENET1K_V1"`` (or ``"DEFAULT"`` for ``builder``) into a weights enum."""
    try:
        if name == "DEFAULT" and builder is not None:
            return torchvision.models.get_model_weights(builder).DEFAULT
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as err:
        raise WeightsError(
            f"{key}={name!r} is neither a file nor a torchvision weights name "
            f"(e.g. 'ResNet50_Weights.IMAGENET1K_V1' or 'DEFAULT'): {err}"
        ) from err


def build_backbone(name: str, *, weights: str | None = None, norm: str = "frozen_bn", dcn_stages: tuple[int, ...] = (),
                   key: str = "backbone") -> nn.Module:
    """A torchvision ResNet/ResNeXt trunk; ``weights`` a torchvision weights name or None; ``dcn_stages``
    the stages (2, 3, 4 = c3–c5) whose 3×3 convolutions are deformable."""
    if name not in BACKBONES:
        raise ValueError(f"{key}={name!r} is not a known backbone; expected one of {', '.join(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; expected one of {', '.join(NORMS)}")
    spec = BACKBONES[name]
    w = resolve_torchvision_weights(weights, spec.builder, key=f"{key}_weights") if weights else None
    try:
        trunk = spec.builder(weights=w, norm_layer=NORM_LAYERS[norm])
    except TypeError as err:  # torchvision: weights of another architecture
        raise WeightsError(f"{key}_weights={weights!r} are not weights of {name}: {err}") from err
    add_deformable_convs(trunk, tuple(dcn_stages))  # pretrained 3x3 weights kept, offsets start at zero
    return trunk
