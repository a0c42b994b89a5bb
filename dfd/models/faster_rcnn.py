"""The Faster R-CNN family: torchvision's Faster R-CNN on a ResNet/ResNeXt FPN with levels P2–P6.

Distillable maps: the FPN outputs ``p2``…``p6`` (strides 4…64; P6 by max-pooling P5, as
mmdetection's ``num_outs=5`` without extra convs). Distilled by default: P2–P5, the four
``neck.fpn_convs`` outputs the baselines' public Faster R-CNN configs distil (mmrazor's PKD
``pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco``, FGD's and MGD's cascade → faster configs).

The defaults are mmdetection 2.x's ``faster_rcnn_r50_fpn`` (PROTOCOLS.md §2) where torchvision's
differ: 1000 proposals after NMS in training (torchvision: 2000) and RoIAlign with adaptive
sampling (``roi_sampling_ratio=0``; torchvision: 2). A known remaining difference, kept for the
two-stage issue: torchvision's RoIAlign is not ``aligned=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .detection import DetectorOptions, FloatOutputs, Fp32AnchorGenerator, image_list, resnet_fpn
from .family import Batch, Family, OptionError, StepOutput, TaskModel, arch, check_positive, register_family, select_maps

FASTER_RCNN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
ROI_LEVELS = ["p2", "p3", "p4", "p5"]  # the RoI extractor's levels (mmdetection: featmap_strides 4..32)


@dataclass
class FasterRCNNOptions(DetectorOptions):
    """Faster R-CNN options: RPN anchors (one size per level, ratios 0.5, 1, 2), proposal and RoI
    sampling, the box head's width, and the test settings; defaults as mmdetection 2.x."""

    family: str = "faster_rcnn"
    representation_size: int = arch(1024)  # the box head's two fully connected layers
    rpn_pre_nms_top_n_train: int = 2000  # per level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    roi_sampling_ratio: int = 0  # RoIAlign sampling points per bin; 0 = adaptive (mmdetection)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def check(self) -> None:
        super().check()
        for key in ("representation_size", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image", "box_detections_per_img"):
            check_positive(key, getattr(self, key))
        for key in ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction", "box_fg_iou_thresh",
                    "box_bg_iou_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh"):
            if not 0 <= getattr(self, key) <= 1:
                raise OptionError(key, getattr(self, key), "expected a number in [0, 1]")
        if self.roi_sampling_ratio < 0:
            raise OptionError("roi_sampling_ratio", self.roi_sampling_ratio, "expected 0 (adaptive) or a positive count")


class MaxPoolP6(ExtraFPNBlock):
    """P6 = P5 subsampled by 2 (max-pool, kernel 1), named ``p6``; torchvision's ``LastLevelMaxPool`` calls it "pool"."""

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return [*p, F.max_pool2d(p[-1], kernel_size=1, stride=2, padding=0)], [*names, "p6"]


class FloatRPNHead(FloatOutputs, RPNHead):
    """The RPN head with fp32 objectness and deltas."""


class FloatFastRCNNPredictor(FloatOutputs, FastRCNNPredictor):
    """The box predictor with fp32 class scores and deltas."""


class FasterRCNNModel(TaskModel, FasterRCNN):
    """torchvision's Faster R-CNN, spoken to through :class:`TaskModel`.

    Anchors, proposals, matching, losses and box decoding run in fp32 whatever the autocast dtype
    (fp32 head outputs and anchors); the trunk, FPN, RPN convolution and box head run in it.
    """

    def train_step(self, batch: Batch) -> StepOutput:
        maps = self.backbone(batch.images)
        proposals, rpn_losses = self.rpn(image_list(batch), maps, batch.targets)
        _, roi_losses = self.roi_heads(maps, proposals, batch.image_sizes, batch.targets)
        return StepOutput({**rpn_losses, **roi_losses}, dict(maps))

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.backbone(batch.images), names)

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        maps = self.backbone(batch.images)
        proposals, _ = self.rpn(image_list(batch), maps)
        detections, _ = self.roi_heads(maps, proposals, batch.image_sizes)
        return detections


def build_faster_rcnn(options: FasterRCNNOptions, num_classes: int) -> FasterRCNNModel:
    """Faster R-CNN for ``num_classes`` categories (labels 1..K, 0 is the background class)."""
    o = options
    body = resnet_fpn(o, {"layer1": "p2", "layer2": "p3", "layer3": "p4", "layer4": "p5"}, MaxPoolP6())
    anchors = Fp32AnchorGenerator(tuple((s,) for s in o.anchor_sizes), ((0.5, 1.0, 2.0),) * len(o.anchor_sizes))
    roi_pool = MultiScaleRoIAlign(ROI_LEVELS, output_size=7, sampling_ratio=o.roi_sampling_ratio)
    return FasterRCNNModel(
        body, num_classes=None, rpn_anchor_generator=anchors,
        rpn_head=FloatRPNHead(o.fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=roi_pool, box_head=TwoMLPHead(o.fpn_channels * 7 * 7, o.representation_size),
        box_predictor=FloatFastRCNNPredictor(o.representation_size, num_classes + 1),
        rpn_pre_nms_top_n_train=o.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=o.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=o.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=o.rpn_post_nms_top_n_test,
        rpn_nms_thresh=o.rpn_nms_thresh, rpn_fg_iou_thresh=o.rpn_fg_iou_thresh, rpn_bg_iou_thresh=o.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=o.rpn_batch_size_per_image, rpn_positive_fraction=o.rpn_positive_fraction,
        box_fg_iou_thresh=o.box_fg_iou_thresh, box_bg_iou_thresh=o.box_bg_iou_thresh,
        box_batch_size_per_image=o.box_batch_size_per_image, box_positive_fraction=o.box_positive_fraction,
        box_score_thresh=o.box_score_thresh, box_nms_thresh=o.box_nms_thresh, box_detections_per_img=o.box_detections_per_img,
    )


FAMILY = register_family(Family(
    name="faster_rcnn",
    options=FasterRCNNOptions,
    build=build_faster_rcnn,
    task="detection",
    levels=FASTER_RCNN_LEVELS,
    default_levels=("p2", "p3", "p4", "p5"),
    inherit_prefixes=("backbone.fpn.", "rpn.", "roi_heads."),
))
