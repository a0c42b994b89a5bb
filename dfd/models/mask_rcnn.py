"""The Mask R-CNN family: Faster R-CNN with mmdetection's ``FCNMaskHead`` on a ResNet/ResNeXt FPN.

mmdetection 2.x's ``configs/_base_/models/mask_rcnn_r50_fpn.py`` (PROTOCOLS.md §2): as Faster R-CNN,
plus RoI assignment with low-quality matches (``box_low_quality_matches``) and the mask branch
(RoIAlign 14, 4 convs of 256, a 2× deconvolution, 28×28 per-class masks, binary cross-entropy on
binarised, aligned targets). Table 3's 42.2 teacher is ``mask_rcnn_x101_32x4d_fpn_2x_coco``
(``conf/teacher/mask_rcnn_x101.yaml``).

Task ``instance``: predictions carry ``masks`` [K, 1, h, w] (probabilities at the input size) next to
the boxes; the evaluators score ``bbox/AP…`` and ``segm/AP…``; the tables report bbox mAP. The data
decodes instance masks for it (``target_keys`` include ``masks``). Distillable maps and defaults are
Faster R-CNN's (P2–P6, P2–P5 distilled), so it teaches a Faster R-CNN student.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .detection import DetectorOptions
from .family import Family, register_family
from .faster_rcnn import resnet_fpn_p2_p6
from .mmdet import rename
from .two_stage import (
    DEFAULT_LEVELS,
    INHERIT_PREFIXES,
    LEVELS,
    MaskFields,
    RCNNFields,
    StandardRoIHeads,
    TwoStageDetector,
    assemble,
    background_first,
    neck_rules,
    roi_rules,
)

INSTANCE_TARGETS = ("boxes", "labels", "masks")


@dataclass
class MaskRCNNOptions(MaskFields, RCNNFields, DetectorOptions):
    """Mask R-CNN options: Faster R-CNN's and the mask branch's (:class:`~dfd.models.two_stage.MaskFields`);
    defaults mmdetection 2.x's ``mask_rcnn_r50_fpn`` (its RoI assigner matches low-quality RoIs)."""

    family: str = "mask_rcnn"
    box_low_quality_matches: bool = True

    def check(self) -> None:
        super().check()
        self.check_rcnn()
        self.check_mask()


def build_mask_rcnn(options: MaskRCNNOptions, num_classes: int) -> TwoStageDetector:
    """Mask R-CNN for ``num_classes`` categories (labels 1..K; box and mask heads have a background 0)."""
    body = resnet_fpn_p2_p6(options)
    heads = StandardRoIHeads(options, options.fpn_channels, num_classes, with_mask=True)
    return assemble(body, heads, options, options.fpn_channels)


MASK_RCNN_RULES = (
    *neck_rules(),
    *roi_rules(r"roi_head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head", "roi_heads.mask_predictor"),
)


def mask_rcnn_from_mmdet(state, options) -> dict[str, Tensor]:
    """An mmdetection 2.x Mask R-CNN's weights as this model's: names by :data:`MASK_RCNN_RULES` (or the
    Swin trunk's, :func:`dfd.models.swin.mask_rcnn_swin_from_mmdet`), the classifier's background column
    moved first, zero background rows / map added to the class-specific regressor and mask logits."""
    out = rename(state, MASK_RCNN_RULES)
    background_first(out, "roi_heads.box_predictor", "roi_heads.mask_predictor", agnostic=False)
    return out


FAMILY = register_family(Family(
    name="mask_rcnn",
    options=MaskRCNNOptions,
    build=build_mask_rcnn,
    task="instance",
    levels=LEVELS,
    default_levels=DEFAULT_LEVELS,
    inherit_prefixes=INHERIT_PREFIXES,
    target_keys=INSTANCE_TARGETS,
    from_mmdet=mask_rcnn_from_mmdet,
))

__all__ = ["INSTANCE_TARGETS", "MaskRCNNOptions", "build_mask_rcnn", "mask_rcnn_from_mmdet"]
