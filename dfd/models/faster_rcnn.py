"""The Faster R-CNN family: a ResNet/ResNeXt FPN with levels P2–P6, an RPN and a two-fc RoI head.

Distillable maps: the FPN outputs ``p2``…``p6`` (strides 4…64; P6 by max-pooling P5, as
mmdetection's ``num_outs=5`` without extra convs). Distilled by default: P2–P5, the four
``neck.fpn_convs`` outputs the baselines' public Faster R-CNN configs distil (mmrazor's PKD
``pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco``, FGD's and MGD's cascade → faster configs).

Built from torchvision's parts as mmdetection 2.x builds ``configs/_base_/models/faster_rcnn_r50_fpn.py``
(PROTOCOLS.md §2): every difference from torchvision's Faster R-CNN is an option of
:class:`~dfd.models.two_stage.RCNNFields` whose default is mmdetection's (1000 proposals after NMS in
training, RoIAlign aligned with adaptive sampling, exact anchors, L1 box losses, mmdetection's
assignment and initialisation); with torchvision's values the model predicts as torchvision's
``FasterRCNN`` loaded with the same weights (tests/test_two_stage.py), whose names it keeps.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .detection import DetectorOptions, resnet_fpn
from .family import Family, register_family
from .mmdet import rename
from .two_stage import (
    DEFAULT_LEVELS,
    INHERIT_PREFIXES,
    LEVELS,
    MaxPoolP6,
    RCNNFields,
    StandardRoIHeads,
    TwoStageDetector,
    assemble,
    background_first,
    neck_rules,
    roi_rules,
)

FASTER_RCNN_LEVELS = LEVELS
RETURN_LAYERS = {"layer1": "p2", "layer2": "p3", "layer3": "p4", "layer4": "p5"}


@dataclass
class FasterRCNNOptions(RCNNFields, DetectorOptions):
    """Faster R-CNN options: the trunk and FPN (:class:`DetectorOptions`), RPN and RoI head
    (:class:`~dfd.models.two_stage.RCNNFields`); defaults mmdetection 2.x's ``faster_rcnn_r50_fpn``."""

    family: str = "faster_rcnn"

    def check(self) -> None:
        super().check()
        self.check_rcnn()


# Kept for code that imported them from here.
FasterRCNNModel = TwoStageDetector


def resnet_fpn_p2_p6(options: DetectorOptions):
    """The trunk with an FPN on C2–C5 and P6 by max-pooling: maps ``p2``…``p6``."""
    return resnet_fpn(options, RETURN_LAYERS, MaxPoolP6())


def build_faster_rcnn(options: FasterRCNNOptions, num_classes: int) -> TwoStageDetector:
    """Faster R-CNN for ``num_classes`` categories (labels 1..K, 0 is the background class)."""
    body = resnet_fpn_p2_p6(options)
    return assemble(body, StandardRoIHeads(options, options.fpn_channels, num_classes), options, options.fpn_channels)


FASTER_RCNN_RULES = (
    *neck_rules(),
    *roi_rules(r"roi_head", "roi_heads.box_head", "roi_heads.box_predictor"),
)


def faster_rcnn_from_mmdet(state, options: FasterRCNNOptions) -> dict[str, Tensor]:
    """An mmdetection 2.x Faster R-CNN's weights (ResNet/ResNeXt trunk, DCN included, FPN, RPNHead,
    Shared2FCBBoxHead) as this model's: names by :data:`FASTER_RCNN_RULES`, the classifier's background
    column moved first and zero background rows added to the class-specific regressor."""
    out = rename(state, FASTER_RCNN_RULES)
    background_first(out, "roi_heads.box_predictor", None, agnostic=False)
    return out


FAMILY = register_family(Family(
    name="faster_rcnn",
    options=FasterRCNNOptions,
    build=build_faster_rcnn,
    task="detection",
    levels=FASTER_RCNN_LEVELS,
    default_levels=DEFAULT_LEVELS,
    inherit_prefixes=INHERIT_PREFIXES,
    from_mmdet=faster_rcnn_from_mmdet,
))
