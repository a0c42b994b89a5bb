"""What the torchvision-based detectors share: ResNet/ResNeXt trunks with an FPN, their options, helpers."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbones import BACKBONES, NORMS, build_backbone
from .family import Batch, ModelOptions, OptionError, arch, check_choice, check_positive

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


@dataclass
class DetectorOptions(ModelOptions):
    """Options of the FPN detectors on a torchvision ResNet/ResNeXt trunk.

    ``trainable_layers`` counts trunk stages from the top (3: layer2–layer4 train, the stem and
    layer1 are frozen, as mmdetection's ``frozen_stages=1``). ``norm`` is the trunk's
    normalisation: ``bn_eval`` (mmdetection's ``requires_grad=True, norm_eval=True``: statistics
    frozen, affine parameters trained), ``frozen_bn`` (torchvision's detection models: both frozen)
    or ``bn`` (both trained). ``anchor_sizes`` are the base anchor sizes of the five pyramid levels.
    """

    backbone: str = arch("resnet50")
    backbone_weights: Optional[str] = None  # torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V1
    norm: str = "bn_eval"
    trainable_layers: int = 3
    fpn_channels: int = arch(256)
    anchor_sizes: List[int] = arch(factory=lambda: [32, 64, 128, 256, 512])
    dcn_stages: List[int] = arch(factory=list)  # trunk stages with deformable 3x3 convs: [2, 3, 4] = mmdetection's c3-c5

    def check(self) -> None:
        super().check()
        check_choice("backbone", self.backbone, list(BACKBONES))
        check_choice("norm", self.norm, NORMS)
        check_positive("fpn_channels", self.fpn_channels)
        if not 0 <= self.trainable_layers <= 5:
            raise OptionError("trainable_layers", self.trainable_layers, "expected 0..5")
        if any(st not in (2, 3, 4) for st in self.dcn_stages):
            raise OptionError("dcn_stages", list(self.dcn_stages), "expected stages among 2, 3, 4 (c3-c5)")
        if len(self.anchor_sizes) != 5 or any(s <= 0 for s in self.anchor_sizes):
            raise OptionError("anchor_sizes", list(self.anchor_sizes), "expected 5 positive sizes, one per pyramid level")


def freeze_stages(trunk: nn.Module, trainable_layers: int) -> None:
    """Freeze every trunk stage but the top ``trainable_layers`` (5: all train, the stem's norm included)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = set(STAGES[5 - trainable_layers :])
    if trainable_layers == 5:
        trainable.add("bn1")
    for name, param in trunk.named_parameters():
        if not any(name.startswith(stage) for stage in trainable):
            param.requires_grad_(False)


def resnet_fpn(options: DetectorOptions, return_layers: Mapping[str, str], extra_blocks: ExtraFPNBlock | None) -> BackboneWithFPN:
    """The trunk named by ``options.backbone`` with an FPN over ``return_layers`` (trunk stage → level name)."""
    trunk = build_backbone(options.backbone, weights=options.backbone_weights, norm=options.norm,
                           dcn_stages=tuple(options.dcn_stages))
    freeze_stages(trunk, options.trainable_layers)
    widths = dict(zip(STAGES[1:], BACKBONES[options.backbone].channels))
    return BackboneWithFPN(
        trunk,
        return_layers=dict(return_layers),
        in_channels_list=[widths[layer] for layer in return_layers],
        out_channels=options.fpn_channels,
        extra_blocks=extra_blocks,
    )


def image_list(batch: Batch) -> ImageList:
    return ImageList(batch.images, batch.image_sizes)


def to_float(x):
    """Tensors in fp32, also inside lists, tuples and dicts."""
    if isinstance(x, Tensor):
        return x.float()
    if isinstance(x, dict):
        return {k: to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float(v) for v in x)
    return x


class FloatOutputs:
    """Mixin for a head (first among its bases): its layers run in the autocast dtype, its outputs are fp32.

    What follows a head (box decoding, matching, losses, post-processing) then runs in fp32, as
    mmdetection's ``force_fp32`` heads do; bf16 boxes would lose about a pixel per 100 (geometry).
    Parameter names are the base class's, so torchvision checkpoints load.
    """

    def forward(self, *args, **kwargs):
        return to_float(super().forward(*args, **kwargs))


class Fp32AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator, always in fp32 (it builds anchors in the feature maps' dtype)."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        proxies = [torch.empty((0, 0, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, proxies)
