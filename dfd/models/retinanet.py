"""The RetinaNet family: torchvision's RetinaNet on a ResNet/ResNeXt FPN with levels P3–P7.

Distillable maps: the FPN outputs ``p3``…``p7`` (strides 8…128), the outputs of
``backbone`` (the trunk and FPN), before the shared classification and box heads, as the
baselines' public RetinaNet configs distil them (FGD, MGD: ``neck.fpn_convs``; PKD: the neck's
outputs; see docs/choices.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbones import BACKBONES
from .detection import DetectorOptions, FloatOutputs, Fp32AnchorGenerator, image_list, resnet_fpn
from .family import Batch, Family, OptionError, StepOutput, TaskModel, arch, check_choice, register_family, select_maps

RETINANET_LEVELS = ("p3", "p4", "p5", "p6", "p7")


@dataclass
class RetinaNetOptions(DetectorOptions):
    """RetinaNet options; the defaults are mmdetection's ``retinanet_r50_fpn`` (PROTOCOLS.md §1).

    ``p6_from``: P6 = conv3×3/2 on C5 (mmdetection's ``add_extra_convs='on_input'``) or on P5
    (torchvision's COCO models). Test settings: ``score_thresh``, ``nms_thresh``,
    ``detections_per_img`` and ``topk_candidates`` (candidates per level before NMS).
    """

    family: str = "retinanet"
    p6_from: str = arch("c5")
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000

    def check(self) -> None:
        super().check()
        check_choice("p6_from", self.p6_from, ("c5", "p5"))
        if not 0 <= self.score_thresh < 1:
            raise OptionError("score_thresh", self.score_thresh, "expected a number in [0, 1)")


class P6P7(ExtraFPNBlock):
    """P6 = conv3×3/2 on C5 (``source="c5"``) or on P5; P7 = conv3×3/2(ReLU(P6)).

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


class FloatRetinaNetHead(FloatOutputs, RetinaNetHead):
    """RetinaNet's heads with fp32 outputs."""


class RetinaNetModel(TaskModel, RetinaNet):
    """torchvision's RetinaNet, spoken to through :class:`TaskModel`.

    Anchors, losses and box decoding run in fp32 whatever the autocast dtype; the trunk, FPN and
    heads run in it.
    """

    def _head(self, batch: Batch) -> tuple[dict[str, Tensor], list[Tensor], dict[str, Tensor]]:
        maps = self.backbone(batch.images)
        features = list(maps.values())
        return maps, self.anchor_generator(image_list(batch), features), self.head(features)

    def train_step(self, batch: Batch) -> StepOutput:
        maps, anchors, head = self._head(batch)
        with torch.autocast(batch.images.device.type, enabled=False):
            losses = self.compute_loss(batch.targets, head, anchors)
        return StepOutput(losses, dict(maps))

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.backbone(batch.images), names)

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        maps, anchors, head = self._head(batch)
        per_level = [m.shape[-2] * m.shape[-1] for m in maps.values()]
        a = head["cls_logits"].shape[1] // sum(per_level)
        sizes = [n * a for n in per_level]
        split_head = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
        split_anchors = [list(x.split(sizes)) for x in anchors]
        with torch.autocast(batch.images.device.type, enabled=False):
            return self.postprocess_detections(split_head, split_anchors, batch.image_sizes)


def build_retinanet(options: RetinaNetOptions, num_classes: int) -> RetinaNetModel:
    """RetinaNet for ``num_classes`` categories (labels 1..K; label 0 is unused by the sigmoid head,
    as in torchvision's COCO models, so their weights load). Each level's anchors have 3 octave
    scales (×2^0, ×2^(1/3), ×2^(2/3)) and aspect ratios 0.5, 1, 2."""
    c5 = BACKBONES[options.backbone].channels[-1]
    extra = P6P7(c5 if options.p6_from == "c5" else options.fpn_channels, options.fpn_channels, options.p6_from)
    body = resnet_fpn(options, {"layer2": "p3", "layer3": "p4", "layer4": "p5"}, extra)
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in options.anchor_sizes)
    anchors = Fp32AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = FloatRetinaNetHead(options.fpn_channels, anchors.num_anchors_per_location()[0], num_classes + 1)
    return RetinaNetModel(
        body, num_classes + 1, anchor_generator=anchors, head=head, score_thresh=options.score_thresh,
        nms_thresh=options.nms_thresh, detections_per_img=options.detections_per_img,
        topk_candidates=options.topk_candidates,
    )


FAMILY = register_family(Family(
    name="retinanet",
    options=RetinaNetOptions,
    build=build_retinanet,
    task="detection",
    levels=RETINANET_LEVELS,
    default_levels=RETINANET_LEVELS,
    inherit_prefixes=("backbone.fpn.", "head."),
))
