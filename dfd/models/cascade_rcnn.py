"""The Cascade Mask R-CNN family: three RoI stages of rising IoU, each with its box and mask head.

mmdetection 2.x's ``configs/_base_/models/cascade_mask_rcnn_r50_fpn.py`` (PROTOCOLS.md §3); Table 2's
teacher of the Faster R-CNN student is ``dcn/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco``
(ResNeXt-101 32x4d with deformable 3×3 convolutions in c3–c5: ``dcn_stages=[2, 3, 4]``; 47.3 box AP;
``conf/teacher/cascade_mask_rcnn_x101.yaml``).

Training (mmdetection's ``CascadeRoIHead.forward_train``): stage s assigns the RoIs at IoU
``stage_iou_thresholds[s]`` (0.5, 0.6, 0.7; positive = negative = low-quality threshold, no low-quality
matching), samples 512 with a quarter positive (ground truths added), and trains its class scores,
class-agnostic deltas (target stds ``stage_stds[s]``) and mask head on them, each loss times
``stage_loss_weights[s]`` (1, 0.5, 0.25). Stage s + 1 starts from stage s's sampled RoIs, refined by its
deltas and clipped, the ground-truth proposals left out (``refine_bboxes``). Smooth-L1 β is 1/9 in the
RPN and 1 in the stages; the RPN keeps 2000 proposals in training and samples only anchors inside the
image (``allowed_border=0``).

Test (``simple_test``): every stage scores the RoIs refined by the stages before it; the class logits of
the stages are averaged (then softmax), the boxes are the last stage's; each detection's mask is the
mean of the stages' mask probabilities (``merge_aug_masks``).

``box_fg_iou_thresh`` / ``box_bg_iou_thresh`` / ``box_low_quality_matches`` are not used: the stages' IoUs are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from .detection import DetectorOptions
from .family import Family, OptionError, arch, register_family
from .faster_rcnn import resnet_fpn_p2_p6
from .mask_rcnn import INSTANCE_TARGETS
from .mmdet import rename
from .two_stage import (
    DEFAULT_LEVELS,
    INHERIT_PREFIXES,
    LEVELS,
    ROI_LEVELS,
    ROI_STRIDES,
    BoxPredictor,
    LevelRoIAlign,
    MaskFields,
    MaxIoUMatcher,
    RCNNFields,
    TwoStageDetector,
    assemble,
    background_first,
    box_losses,
    coder,
    decode_boxes,
    detections,
    mask_branch,
    mask_logits,
    mask_losses,
    neck_rules,
    pick_class,
    sample_rois,
    with_masks,
)


@dataclass
class CascadeMaskRCNNOptions(MaskFields, RCNNFields, DetectorOptions):
    """Cascade Mask R-CNN options: Mask R-CNN's, with the cascade's stages; defaults mmdetection 2.x's
    ``cascade_mask_rcnn_r50_fpn`` (its RPN: 2000 proposals kept in training, anchors inside the image,
    smooth L1 β 1/9; its stages: smooth L1 β 1). The number of stages is ``len(stage_iou_thresholds)``."""

    family: str = "cascade_mask_rcnn"
    rpn_post_nms_top_n_train: int = 2000
    rpn_allowed_border: int = 0
    rpn_box_beta: float = 1.0 / 9.0
    box_beta: float = 1.0
    stage_iou_thresholds: List[float] = arch(factory=lambda: [0.5, 0.6, 0.7])
    stage_stds: List[List[float]] = arch(factory=lambda: [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]])
    stage_loss_weights: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])

    def check(self) -> None:
        super().check()
        self.check_rcnn()
        self.check_mask()
        n = len(self.stage_iou_thresholds)
        if n == 0 or any(not 0 < t <= 1 for t in self.stage_iou_thresholds):
            raise OptionError("stage_iou_thresholds", list(self.stage_iou_thresholds), "expected one IoU in (0, 1] per stage")
        if len(self.stage_stds) != n or any(len(s) != 4 or min(s) <= 0 for s in self.stage_stds):
            raise OptionError("stage_stds", [list(s) for s in self.stage_stds], f"expected {n} lists of 4 positive stds, one per stage")
        if len(self.stage_loss_weights) != n or min(self.stage_loss_weights) < 0:
            raise OptionError("stage_loss_weights", list(self.stage_loss_weights), f"expected {n} weights >= 0, one per stage")


class CascadeRoIHeads(nn.Module):
    """The cascade's RoI stages (see the module docstring). Parameters: ``box_heads.{s}`` (fc6, fc7),
    ``box_predictors.{s}`` (cls_score, 4 class-agnostic deltas), ``mask_heads.{s}``, ``mask_predictors.{s}``."""

    def __init__(self, options: CascadeMaskRCNNOptions, fpn_channels: int, num_classes: int, with_mask: bool = True) -> None:
        super().__init__()
        o = options
        n = len(o.stage_iou_thresholds)
        self.box_roi_pool = LevelRoIAlign(ROI_LEVELS, ROI_STRIDES, 7, o.roi_sampling_ratio, o.roi_aligned)
        self.box_heads = nn.ModuleList(TwoMLPHead(fpn_channels * 7 * 7, o.representation_size) for _ in range(n))
        self.box_predictors = nn.ModuleList(BoxPredictor(o.representation_size, num_classes + 1, agnostic=True) for _ in range(n))
        self.matchers = [MaxIoUMatcher(t, t, False, t) for t in o.stage_iou_thresholds]
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(o.box_batch_size_per_image, o.box_positive_fraction)
        self.box_coders = [coder(stds) for stds in o.stage_stds]
        self.stage_weights = [float(w) for w in o.stage_loss_weights]
        self.box_beta = o.box_beta
        self.test_cfg = (o.box_score_thresh, o.box_nms_thresh, o.box_detections_per_img)
        self.has_mask = with_mask
        self._warned = [False]
        if with_mask:
            branches = [mask_branch(o, fpn_channels, num_classes) for _ in range(n)]
            self.mask_roi_pool = branches[0][0]
            self.mask_heads = nn.ModuleList(b[1] for b in branches)
            self.mask_predictors = nn.ModuleList(b[2] for b in branches)
            self.mask_cfg = (2 * o.mask_roi_size, o.roi_aligned, o.mask_binary_targets)

    def _boxes(self, stage: int, maps, rois, sizes) -> tuple[Tensor, Tensor]:
        return self.box_predictors[stage](self.box_heads[stage](self.box_roi_pool(maps, rois, sizes)))

    def losses(self, maps, proposals, sizes, targets) -> dict[str, Tensor]:
        """Σ_s w_s (L_cls + L_box + L_mask) of stage s, as ``s{s}.loss_*`` (each already weighted)."""
        out: dict[str, Tensor] = {}
        last = len(self.stage_weights) - 1
        for s, w in enumerate(self.stage_weights):
            samples = sample_rois(proposals, targets, self.matchers[s], self.fg_bg_sampler, self.box_coders[s])
            logits, deltas = self._boxes(s, maps, [x.boxes for x in samples], sizes)
            with torch.autocast(logits.device.type, enabled=False):
                cls, box = box_losses(logits, deltas, samples, self.box_beta)
            out[f"s{s}.loss_classifier"], out[f"s{s}.loss_box_reg"] = w * cls, w * box
            if self.has_mask:
                modules = (self.mask_roi_pool, self.mask_heads[s], self.mask_predictors[s])
                out[f"s{s}.loss_mask"] = w * mask_losses(modules, maps, samples, sizes, targets, self.mask_cfg, self._warned)
            if s < last:
                with torch.no_grad():
                    refined = decode_boxes(deltas.detach(), [x.boxes for x in samples], self.box_coders[s], sizes)
                proposals = [b[:, 0][~x.is_gt] for b, x in zip(refined, samples)]
        return out

    def detect(self, maps, proposals, sizes) -> list[dict[str, Tensor]]:
        rois, scores = list(proposals), []
        for s in range(len(self.box_heads)):
            logits, deltas = self._boxes(s, maps, rois, sizes)
            scores.append(logits)
            if s < len(self.box_heads) - 1:
                rois = [b[:, 0] for b in decode_boxes(deltas, rois, self.box_coders[s], sizes)]
        with torch.autocast(deltas.device.type, enabled=False):
            dets = detections(torch.stack(scores).mean(0), deltas, rois, self.box_coders[-1], sizes, *self.test_cfg)
        if not self.has_mask:
            return dets
        boxes, labels = [d["boxes"] for d in dets], torch.cat([d["labels"] for d in dets])
        probs = [pick_class(mask_logits(self.mask_roi_pool, head, pred, maps, boxes, sizes), labels)
                 for head, pred in zip(self.mask_heads, self.mask_predictors)]
        with torch.autocast(deltas.device.type, enabled=False):
            return with_masks(dets, torch.stack(probs).mean(0), sizes)


def build_cascade_mask_rcnn(options: CascadeMaskRCNNOptions, num_classes: int) -> TwoStageDetector:
    """Cascade Mask R-CNN for ``num_classes`` categories (labels 1..K); DCN in the trunk by ``dcn_stages``."""
    body = resnet_fpn_p2_p6(options)
    return assemble(body, CascadeRoIHeads(options, options.fpn_channels, num_classes), options, options.fpn_channels)


CASCADE_RULES = (
    *neck_rules(),
    (r"roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_heads.\1.fc6.\2"),
    (r"roi_head\.bbox_head\.(\d+)\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_heads.\1.fc7.\2"),
    (r"roi_head\.bbox_head\.(\d+)\.fc_cls\.(weight|bias)", r"roi_heads.box_predictors.\1.cls_score.\2"),
    (r"roi_head\.bbox_head\.(\d+)\.fc_reg\.(weight|bias)", r"roi_heads.box_predictors.\1.bbox_pred.\2"),
    (r"roi_head\.mask_head\.(\d+)\.convs\.(\d+)\.conv\.(weight|bias)", r"roi_heads.mask_heads.\1.\2.0.\3"),
    (r"roi_head\.mask_head\.(\d+)\.upsample\.(weight|bias)", r"roi_heads.mask_predictors.\1.conv5_mask.\2"),
    (r"roi_head\.mask_head\.(\d+)\.conv_logits\.(weight|bias)", r"roi_heads.mask_predictors.\1.mask_fcn_logits.\2"),
)


def cascade_mask_rcnn_from_mmdet(state, options: CascadeMaskRCNNOptions) -> dict[str, Tensor]:
    """An mmdetection 2.x Cascade Mask R-CNN's weights (trunk with its DCN offsets, FPN, RPNHead,
    ``roi_head.bbox_head.{s}`` Shared2FCBBoxHeads with class-agnostic ``fc_reg`` (4 outputs),
    ``roi_head.mask_head.{s}`` FCNMaskHeads) as this model's: names by :data:`CASCADE_RULES`, each stage's
    classifier background column moved first, a zero background map added to each stage's mask logits."""
    out = rename(state, CASCADE_RULES)
    for s in range(len(options.stage_iou_thresholds)):
        background_first(out, f"roi_heads.box_predictors.{s}", f"roi_heads.mask_predictors.{s}", agnostic=True)
    return out


FAMILY = register_family(Family(
    name="cascade_mask_rcnn",
    options=CascadeMaskRCNNOptions,
    build=build_cascade_mask_rcnn,
    task="instance",
    levels=LEVELS,
    default_levels=DEFAULT_LEVELS,
    inherit_prefixes=INHERIT_PREFIXES,
    target_keys=INSTANCE_TARGETS,
    from_mmdet=cascade_mask_rcnn_from_mmdet,
))
