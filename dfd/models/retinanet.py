"""RetinaNet (torchvision) with a ResNet/ResNeXt FPN producing P3–P7."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbones import BACKBONES, build_backbone

RETINANET_LEVELS = ("p3", "p4", "p5", "p6", "p7")
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


class P6P7(ExtraFPNBlock):
    """P6 = conv3×3/2 on C5 (``source="c5"``, the RetinaNet paper and mmdet) or on P5; P7 = conv3×3/2(ReLU(P6)).

    Parameter names match torchvision's ``LastLevelP6P7``, so its checkpoints load.
    """

    def __init__(self, in_channels: int, out_channels: int, source: str = "c5") -> None:
        super().__init__()
        if source not in ("c5", "p5"):
            raise ValueError(f"p6_from={source!r}; expected 'c5' or 'p5'")
        self.source = source
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(c[-1] if self.source == "c5" else p[-1])
        p7 = self.p7(F.relu(p6))
        return [*p, p6, p7], [*names, "p6", "p7"]


def _freeze_stages(trunk: nn.Module, trainable_layers: int) -> None:
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = set(_STAGES[5 - trainable_layers :])
    if trainable_layers == 5:
        trainable.add("bn1")
    for name, param in trunk.named_parameters():
        if not any(name.startswith(stage) for stage in trainable):
            param.requires_grad_(False)


def build_retinanet(
    backbone: str,
    num_classes: int,
    *,
    fpn_channels: int = 256,
    p6_from: str = "c5",
    norm: str = "frozen_bn",
    backbone_weights: str | None = None,
    trainable_layers: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
) -> RetinaNet:
    """RetinaNet with FPN outputs named p3..p7 (strides 8..128).

    ``num_classes`` counts label 0 (background, unused by the sigmoid head), as in
    torchvision's COCO models. ``trainable_layers`` counts ResNet stages from the top
    (3: layer2–layer4 train, stem and layer1 frozen, as mmdet's ``frozen_stages=1``).
    ``anchor_sizes`` are the base sizes of P3..P7, each with 3 octave scales and
    aspect ratios 0.5, 1, 2.
    """
    if len(anchor_sizes) != len(RETINANET_LEVELS):
        raise ValueError(f"anchor_sizes needs {len(RETINANET_LEVELS)} values (P3..P7), got {list(anchor_sizes)}")
    trunk = build_backbone(backbone, weights=backbone_weights, norm=norm)
    _freeze_stages(trunk, trainable_layers)
    c3, c4, c5 = BACKBONES[backbone].channels[1:]
    body = BackboneWithFPN(
        trunk,
        return_layers={"layer2": "p3", "layer3": "p4", "layer4": "p5"},
        in_channels_list=[c3, c4, c5],
        out_channels=fpn_channels,
        extra_blocks=P6P7(c5 if p6_from == "c5" else fpn_channels, fpn_channels, p6_from),
    )
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
    return RetinaNet(
        body,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )
