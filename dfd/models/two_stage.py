"""What the two-stage families share (Faster, Mask and Cascade Mask R-CNN, on ResNet or Swin trunks).

torchvision's building blocks (``RegionProposalNetwork``, ``TwoMLPHead``, ``MaskRCNNHeads``, its box
coder and samplers), assembled and trained as mmdetection 2.x does (``configs/_base_/models/
faster_rcnn_r50_fpn.py``, ``mask_rcnn_r50_fpn.py``, ``cascade_mask_rcnn_r50_fpn.py``). Where the two
differ, the difference is an option whose default is mmdetection's (:class:`RCNNFields`):

- RPN assignment (mmdetection's ``MaxIoUAssigner``): positives IoU ≥ 0.7, negatives [0, 0.3), and each
  ground-truth box's best anchors positive when their IoU ≥ ``rpn_min_pos_iou`` (0.3; torchvision: any).
  Anchors whose centre lies in another image's padding are never sampled (mmdetection's ``valid_flags``
  on each image's own ``pad_shape``; torchvision samples them as negatives); with ``rpn_allowed_border``
  ≥ 0 only anchors inside the image by that margin are (Cascade R-CNN: 0).
- Box losses: smooth L1 with β = ``rpn_box_beta`` / ``box_beta``; 0 is L1 (mmdetection's Faster and
  Mask R-CNN), torchvision uses 1/9, mmdetection's Cascade R-CNN 1/9 (RPN) and 1 (RoI stages). Both sum
  over the positives and divide by the number of sampled anchors / RoIs (``avg_factor``).
- RoIAlign: mmcv's ``aligned=True`` (pixel centres at +0.5; torchvision: False), adaptive sampling
  (``roi_sampling_ratio=0``; torchvision 2), RoIs to levels by ⌊log2(√(wh)/56 + 1e-6)⌋ (the same
  mapping as torchvision's k0 = 4, s0 = 224).
- Anchors (scale 8 × stride, ratios 0.5, 1, 2): as computed (``exact_anchors``; torchvision rounds
  them to whole pixels). Box coder: deltas / stds, stds (0.1, 0.1, 0.2, 0.2) = torchvision's weights
  (10, 10, 5, 5).
- Initialisation: FPN Xavier-uniform (``fpn_init``), box head fcs Xavier-uniform, classifier N(0, 0.01),
  regressor N(0, 0.001) (``box_init="mmdet"``; torchvision: PyTorch's Linear default).
- Mask branch (``MaskFields``): RoIAlign 14, 4 convs, a 2× deconvolution, 28×28 logits per class;
  targets = RoIAlign of the ground-truth mask on the positive RoI (aligned) binarised at 0.5
  (``mask_binary_targets``; torchvision keeps the soft, not aligned values). Masks are pasted into the
  input image by bilinear sampling at pixel centres (mmdetection's ``_do_paste_mask``).

Heads return fp32 (``FloatOutputs``), so anchors, matching, coding, losses, post-processing and mask
pasting run in fp32 under bf16 autocast, as mmdetection's ``force_fp32`` heads.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, roi_align
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .detection import FloatOutputs, image_list, to_float
from .family import Batch, OptionError, StepOutput, TaskModel, arch, check_choice, check_positive, select_maps
from .retinanet import RetinaNetAnchors

LEVELS = ("p2", "p3", "p4", "p5", "p6")  # every FPN output: strides 4..64, P6 by max-pooling P5
DEFAULT_LEVELS = ("p2", "p3", "p4", "p5")  # the four fpn_convs outputs the baselines' configs distil
INHERIT_PREFIXES = ("backbone.fpn.", "rpn.", "roi_heads.")  # what distill.inherit copies: neck and heads
ROI_LEVELS = ("p2", "p3", "p4", "p5")  # the RoI extractor's levels (mmdetection: featmap_strides 4..32)
ROI_STRIDES = (4, 8, 16, 32)
FPN_INITS = ("xavier", "kaiming")
BOX_INITS = ("mmdet", "torchvision")
BOX_STDS = (0.1, 0.1, 0.2, 0.2)


def _check_fractions(options, keys: Sequence[str]) -> None:
    for key in keys:
        value = getattr(options, key)
        if value is None or isinstance(value, bool) or not 0 <= value <= 1:
            raise OptionError(key, value, "expected a number in [0, 1]")


@dataclass
class RCNNFields:
    """RPN and RoI-head options of the two-stage families; defaults mmdetection 2.x ``faster_rcnn_r50_fpn``.

    representation_size: the width of the box head's two fully connected layers (``Shared2FCBBoxHead``).
    exact_anchors: base anchors as computed (mmdetection) or rounded to whole pixels (torchvision).
    fpn_init / box_init: see the module docstring. rpn_*: the RPN's proposals (per-level top-n before
    NMS, kept after), assignment (IoU thresholds, ``rpn_min_pos_iou`` for low-quality matches,
    ``rpn_allowed_border``, ``rpn_ignore_padding``), sampling (256 anchors, half positive) and box loss
    β. box_*: the RoI head's assignment (IoU 0.5; ``box_low_quality_matches``: mmdetection's Mask R-CNN
    matches each ground truth's best RoIs at IoU ≥ ``box_fg_iou_thresh``), sampling (512 RoIs, a
    quarter positive, ground truths added as proposals), box loss β and test settings (score ≥ 0.05,
    per-class NMS 0.5, 100 detections). roi_sampling_ratio / roi_aligned: the RoIAlign.
    """

    representation_size: int = arch(1024)
    exact_anchors: bool = arch(True)
    fpn_init: str = "xavier"
    box_init: str = "mmdet"
    rpn_pre_nms_top_n_train: int = 2000  # per level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_allowed_border: int = -1  # -1: every anchor; b >= 0: anchors inside the image by b pixels
    rpn_ignore_padding: bool = True
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_box_beta: float = 0.0  # 0: L1
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_low_quality_matches: bool = False
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_beta: float = 0.0  # 0: L1
    roi_sampling_ratio: int = 0  # RoIAlign sampling points per bin; 0 = adaptive (mmdetection)
    roi_aligned: bool = arch(True)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def check_rcnn(self) -> None:
        """The RPN and RoI options; OptionError names the first invalid one."""
        for key in ("representation_size", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image", "box_detections_per_img"):
            check_positive(key, getattr(self, key))
        _check_fractions(self, ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_min_pos_iou",
                                "rpn_positive_fraction", "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction",
                                "box_score_thresh", "box_nms_thresh"))
        if self.rpn_bg_iou_thresh > self.rpn_fg_iou_thresh:
            raise OptionError("rpn_bg_iou_thresh", self.rpn_bg_iou_thresh, f"expected at most rpn_fg_iou_thresh={self.rpn_fg_iou_thresh}")
        if self.box_bg_iou_thresh > self.box_fg_iou_thresh:
            raise OptionError("box_bg_iou_thresh", self.box_bg_iou_thresh, f"expected at most box_fg_iou_thresh={self.box_fg_iou_thresh}")
        for key in ("rpn_box_beta", "box_beta"):
            if getattr(self, key) < 0:
                raise OptionError(key, getattr(self, key), "expected a smooth-L1 beta >= 0 (0: L1)")
        if self.rpn_allowed_border < -1:
            raise OptionError("rpn_allowed_border", self.rpn_allowed_border, "expected -1 (every anchor) or a margin >= 0")
        if self.roi_sampling_ratio < 0:
            raise OptionError("roi_sampling_ratio", self.roi_sampling_ratio, "expected 0 (adaptive) or a positive count")
        check_choice("fpn_init", self.fpn_init, FPN_INITS)
        check_choice("box_init", self.box_init, BOX_INITS)
        if len(self.anchor_sizes) != 5 or any(s <= 0 for s in self.anchor_sizes):
            raise OptionError("anchor_sizes", list(self.anchor_sizes), "expected 5 positive sizes, one per pyramid level")


@dataclass
class MaskFields:
    """The mask branch (mmdetection's ``FCNMaskHead`` of ``mask_rcnn_r50_fpn``): RoIAlign to
    ``mask_roi_size`` (14), ``mask_convs`` 3×3 convolutions of ``mask_channels`` (4 × 256), a 2×2/2
    deconvolution and one 1×1 logit map per class: ``2 · mask_roi_size`` (28) square masks.
    ``mask_binary_targets``: targets binarised at 0.5 (mmdetection) or soft (torchvision)."""

    mask_roi_size: int = arch(14)
    mask_convs: int = arch(4)
    mask_channels: int = arch(256)
    mask_binary_targets: bool = True

    def check_mask(self) -> None:
        for key in ("mask_roi_size", "mask_convs", "mask_channels"):
            check_positive(key, getattr(self, key))


# ----------------------------------------------------------------------------- RPN


class MaxIoUMatcher(Matcher):
    """mmdetection's ``MaxIoUAssigner`` with torchvision's Matcher interface (-1 negative, -2 ignored).

    For IoU [G, N] between G ground truths and N boxes: a box is negative when 0 ≤ max IoU < ``low``,
    positive (its best ground truth) when max IoU ≥ ``high``; with ``low_quality``, every box whose IoU
    with a ground truth equals that ground truth's best IoU, when that is ≥ ``min_pos_iou``, is matched to
    it (later ground truths win ties, mmdetection's ``gt_max_assign_all``). Boxes with IoU < 0 are ignored.
    """

    def __init__(self, high: float, low: float, low_quality: bool, min_pos_iou: float = 0.0) -> None:
        super().__init__(high, low, allow_low_quality_matches=low_quality)
        self.min_pos_iou = min_pos_iou

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.numel() == 0:
            raise ValueError("MaxIoUMatcher needs at least one ground truth and one box")
        best, best_gt = iou.max(dim=0)
        matches = torch.full_like(best_gt, self.BETWEEN_THRESHOLDS)
        matches[(best >= 0) & (best < self.low_threshold)] = self.BELOW_LOW_THRESHOLD
        positive = best >= self.high_threshold
        matches[positive] = best_gt[positive]
        if self.allow_low_quality_matches:
            gt_best = iou.max(dim=1).values[:, None]
            hit = (iou == gt_best) & (gt_best >= self.min_pos_iou)
            last = (hit * torch.arange(1, iou.shape[0] + 1, device=iou.device)[:, None]).max(dim=0).values
            matches[last > 0] = last[last > 0] - 1
        return matches


class FloatRPNHead(RPNHead):
    """The RPN head (mmdetection's rpn_conv, rpn_cls, rpn_reg): the 3×3 convolution in the autocast dtype, the two
    1×1 predictions in fp32. Proposals are the top-k objectness of ~10⁴ anchors per level: bf16 logits (8-bit
    mantissa) tie and swap there, which moved a smoke Faster R-CNN's AP by +0.22 under bf16 against fp32; with
    fp32 predictions +0.10 (docs/choices.md, "Mixed precision"). The 1×1 layers are a small share of the work."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            with torch.autocast(t.device.type, enabled=False):
                t = t.float()
                logits.append(self.cls_logits(t))
                deltas.append(self.bbox_pred(t))
        return logits, deltas


class TwoStageRPN(RegionProposalNetwork):
    """torchvision's RPN with mmdetection's assignment (:class:`MaxIoUMatcher`, anchors inside the
    image's own padding, ``allowed_border``) and a smooth-L1 box loss of β ``box_beta`` (0: L1)."""

    def __init__(self, anchors, head, o, size_divisible: int = 32) -> None:
        super().__init__(
            anchors, head, o.rpn_fg_iou_thresh, o.rpn_bg_iou_thresh, o.rpn_batch_size_per_image, o.rpn_positive_fraction,
            dict(training=o.rpn_pre_nms_top_n_train, testing=o.rpn_pre_nms_top_n_test),
            dict(training=o.rpn_post_nms_top_n_train, testing=o.rpn_post_nms_top_n_test), o.rpn_nms_thresh,
        )
        self.proposal_matcher = MaxIoUMatcher(o.rpn_fg_iou_thresh, o.rpn_bg_iou_thresh, True, o.rpn_min_pos_iou)
        self.allowed_border, self.ignore_padding = o.rpn_allowed_border, o.rpn_ignore_padding
        self.box_beta, self.size_divisible = o.rpn_box_beta, size_divisible

    def forward(self, images: ImageList, features: Mapping[str, Tensor], targets=None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image (the training or test numbers by ``self.training``); losses when ``targets``."""
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        if targets is None:
            return boxes, {}
        with torch.autocast(objectness.device.type, enabled=False):
            labels, matched = self.assign(anchors, targets, images.image_sizes)
            wanted = self.box_coder.encode(matched, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, wanted)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    def usable(self, anchors: Tensor, size: tuple[int, int]) -> Tensor:
        """Anchors that take part in training: centre inside the image's padded size (a multiple of
        ``size_divisible``), and inside the image by ``allowed_border`` pixels when that is ≥ 0."""
        h, w = size
        ok = torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        if self.ignore_padding:
            d = self.size_divisible
            ok &= ((anchors[:, 0] + anchors[:, 2]) / 2 < math.ceil(w / d) * d) & ((anchors[:, 1] + anchors[:, 3]) / 2 < math.ceil(h / d) * d)
        if self.allowed_border >= 0:
            b = self.allowed_border
            ok &= (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
        return ok

    def assign(self, anchors: list[Tensor], targets, sizes) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels (1 positive, 0 negative, -1 ignored) and each anchor's matched box."""
        labels, matched = [], []
        for a, t, size in zip(anchors, targets, sizes):
            gt = t["boxes"].to(a.dtype)
            ok = self.usable(a, size)
            if gt.numel() == 0:
                lab, box = torch.zeros(a.shape[0], device=a.device), torch.zeros_like(a)
            else:
                iou = box_iou(gt, a)
                iou[:, ~ok] = -1.0
                idx = self.proposal_matcher(iou)
                box = gt[idx.clamp(min=0)]
                lab = (idx >= 0).to(a.dtype)
                lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            lab[~ok] = -1.0
            labels.append(lab)
            matched.append(box)
        return labels, matched

    def compute_loss(self, objectness, deltas, labels, wanted) -> tuple[Tensor, Tensor]:
        """L_obj = mean BCE over the sampled anchors; L_box = Σ_pos smoothL1_β(Δ − Δ*) / #sampled."""
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels, wanted = torch.cat(labels), torch.cat(wanted)
        box = F.smooth_l1_loss(deltas[pos], wanted[pos], beta=self.box_beta, reduction="sum") / max(1, sampled.numel())
        obj = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return obj, box


# ----------------------------------------------------------------------------- RoI features and boxes


class LevelRoIAlign(nn.Module):
    """mmdetection's ``SingleRoIExtractor``: each RoI pooled from one level by its scale,
    level = clamp(⌊log2(√(w·h) / finest_scale + 1e-6)⌋, 0, L − 1), with RoIAlign (``aligned`` as mmcv's)."""

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], output_size: int, sampling_ratio: int,
                 aligned: bool, finest_scale: float = 56.0) -> None:
        super().__init__()
        self.featmap_names, self.strides = list(featmap_names), list(strides)
        self.output_size, self.sampling_ratio, self.aligned, self.finest_scale = output_size, sampling_ratio, aligned, finest_scale

    def forward(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor], image_sizes=None) -> Tensor:
        feats = [features[n] for n in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]).float()
        scale = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=0).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(feats) - 1).long()
        s = self.output_size
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], s, s))
        for i, (f, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(level == i)[0]
            if idx.numel():
                pooled = roi_align(f.to(rois.dtype), rois[idx], s, spatial_scale=1.0 / stride,
                                   sampling_ratio=self.sampling_ratio, aligned=self.aligned)
                out[idx] = pooled.to(out.dtype)
        return out


class BoxPredictor(nn.Module):
    """Class scores (``cls_score``: background column 0, then the K categories) and box deltas
    (``bbox_pred``: 4 per class with the background's, as torchvision's ``FastRCNNPredictor``, or 4 for
    every class: class-agnostic), computed in fp32 (two small layers; their bf16 outputs would round the scores)."""

    def __init__(self, in_channels: int, num_classes: int, agnostic: bool = False) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 if agnostic else num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            x = x.flatten(start_dim=1).float()
            return self.cls_score(x), self.bbox_pred(x)


class FloatMaskPredictor(FloatOutputs, MaskRCNNPredictor):
    """The mask head's deconvolution and per-class logits (background channel 0), in fp32."""


def coder(stds: Sequence[float]) -> BoxCoder:
    """A delta coder with mmdetection's target stds: torchvision's weights are 1 / std."""
    return BoxCoder(tuple(1.0 / s for s in stds))


@dataclass
class Samples:
    """The RoIs sampled for one image: boxes, labels (0 background), regression targets, the index of each
    one's matched ground truth (for mask targets) and whether it is a ground-truth box added as a proposal."""

    boxes: Tensor
    labels: Tensor
    targets: Tensor
    gt_index: Tensor
    is_gt: Tensor


def sample_rois(proposals: Sequence[Tensor], targets, matcher: Matcher, sampler: BalancedPositiveNegativeSampler,
                box_coder: BoxCoder) -> list[Samples]:
    """mmdetection's RoI assignment and ``RandomSampler`` with ``add_gt_as_proposals``, per image."""
    labels_all, items = [], []
    for props, t in zip(proposals, targets):
        gt, gt_labels = t["boxes"].to(props.dtype), t["labels"]
        boxes = torch.cat([props, gt])
        is_gt = torch.arange(boxes.shape[0], device=boxes.device) >= props.shape[0]
        if gt.numel() == 0:
            idx = torch.full((boxes.shape[0],), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=boxes.device)
            labels = torch.zeros_like(idx)
        else:
            idx = matcher(box_iou(gt, boxes))
            labels = gt_labels[idx.clamp(min=0)].to(torch.int64)
            labels[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
            labels[idx == Matcher.BETWEEN_THRESHOLDS] = -1
        labels_all.append(labels)
        items.append((boxes, gt, idx.clamp(min=0), is_gt))
    out = []
    for (boxes, gt, idx, is_gt), labels, pos, neg in zip(items, labels_all, *sampler(labels_all)):
        keep = torch.where(pos | neg)[0]
        matched = gt[idx[keep]] if gt.numel() else torch.zeros_like(boxes[keep])
        out.append(Samples(boxes[keep], labels[keep], box_coder.encode_single(matched, boxes[keep]), idx[keep], is_gt[keep]))
    return out


def box_losses(logits: Tensor, deltas: Tensor, samples: Sequence[Samples], beta: float) -> tuple[Tensor, Tensor]:
    """L_cls = mean CE over the sampled RoIs; L_box = Σ_pos smoothL1_β(Δ_label − Δ*) / #sampled
    (mmdetection's ``avg_factor``; β = 0 is L1). Class-agnostic deltas have 4 columns."""
    labels = torch.cat([s.labels for s in samples])
    wanted = torch.cat([s.targets for s in samples])
    if labels.numel() == 0:
        return logits.sum() * 0, deltas.sum() * 0
    cls = F.cross_entropy(logits, labels)
    pos = torch.where(labels > 0)[0]
    pred = deltas[pos] if deltas.shape[1] == 4 else deltas.reshape(deltas.shape[0], -1, 4)[pos, labels[pos]]
    box = F.smooth_l1_loss(pred, wanted[pos], beta=beta, reduction="sum") / labels.numel()
    return cls, box


def decode_boxes(deltas: Tensor, boxes: Sequence[Tensor], box_coder: BoxCoder, sizes) -> list[Tensor]:
    """Per image, [n, C, 4] boxes (C = 1 when class-agnostic) decoded from ``boxes`` and clipped."""
    counts = [len(b) for b in boxes]
    decoded = box_coder.decode_single(deltas, torch.cat(list(boxes))).reshape(deltas.shape[0], -1, 4).split(counts)
    return [clip_boxes_to_image(d, size) for d, size in zip(decoded, sizes)]


def detections(logits: Tensor, deltas: Tensor, boxes: Sequence[Tensor], box_coder: BoxCoder, sizes,
               score_thresh: float, nms_thresh: float, max_per_img: int) -> list[dict[str, Tensor]]:
    """mmdetection's ``multiclass_nms``: softmax scores, per-class boxes (the shared box when class-agnostic),
    scores > ``score_thresh``, NMS per class, the ``max_per_img`` best. Labels 1..K."""
    scores = F.softmax(logits, -1).split([len(b) for b in boxes])
    out = []
    for decoded, s in zip(decode_boxes(deltas, boxes, box_coder, sizes), scores):
        num_classes = s.shape[1]
        decoded = decoded.expand(-1, num_classes, -1)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=s.device).repeat(s.shape[0])
        s = s[:, 1:].reshape(-1)
        keep = torch.where(s > score_thresh)[0]
        decoded, s, labels = decoded[keep], s[keep], labels[keep]
        keep = batched_nms(decoded, s, labels, nms_thresh)[:max_per_img]
        out.append({"boxes": decoded[keep], "scores": s[keep], "labels": labels[keep]})
    return out


# ----------------------------------------------------------------------------- masks


def mask_branch(options: MaskFields, fpn_channels: int, num_classes: int) -> tuple[LevelRoIAlign, nn.Module, nn.Module]:
    """The mask RoIAlign, the convolutions and the predictor (deconvolution and K + 1 logit maps)."""
    o = options
    pool = LevelRoIAlign(ROI_LEVELS, ROI_STRIDES, o.mask_roi_size, o.roi_sampling_ratio, o.roi_aligned)
    head = MaskRCNNHeads(fpn_channels, [o.mask_channels] * o.mask_convs, 1)
    return pool, head, FloatMaskPredictor(o.mask_channels, o.mask_channels, num_classes + 1)


def target_masks(targets, warned: list[bool]) -> list[Tensor]:
    """Each image's ground-truth masks [G, h, w]; an image without ``masks`` uses its boxes as masks (warned once)."""
    out = []
    for t in targets:
        if "masks" in t:
            out.append(t["masks"])
            continue
        if not warned[0]:
            warnings.warn("targets[i]['masks'] is missing: the mask branch trains on the boxes as masks "
                          "(the data decodes masks when the family's target_keys include 'masks')", stacklevel=3)
            warned[0] = True
        out.append(boxes_as_masks(t["boxes"], t.get("size")))
    return out


def boxes_as_masks(boxes: Tensor, size) -> Tensor:
    """[G, h, w] masks filling each box, h × w covering every box (or ``size``)."""
    if size is not None:
        h, w = (int(v) for v in torch.as_tensor(size).tolist())
    else:
        h = int(boxes[:, 3].max().ceil()) + 1 if boxes.numel() else 1
        w = int(boxes[:, 2].max().ceil()) + 1 if boxes.numel() else 1
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    b = boxes[:, :, None, None]
    return ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).to(torch.uint8)


def mask_targets(gt_masks: Sequence[Tensor], samples: Sequence[Samples], size: int, aligned: bool, binary: bool) -> Tensor:
    """Each positive RoI's target: RoIAlign (``aligned``, adaptive sampling) of its ground-truth mask to
    size × size, ≥ 0.5 when ``binary`` (mmdetection's ``BitmapMasks.crop_and_resize(binarize=True)``)."""
    out = []
    for masks, s in zip(gt_masks, samples):
        pos = s.labels > 0
        if not pos.any():
            continue
        rois = torch.cat([s.gt_index[pos, None].to(s.boxes.dtype), s.boxes[pos]], dim=1)
        out.append(roi_align(masks[:, None].to(s.boxes.dtype), rois, size, 1.0, 0, aligned)[:, 0])
    if not out:
        return torch.zeros((0, size, size))
    targets = torch.cat(out)
    return (targets >= 0.5).to(targets.dtype) if binary else targets


def mask_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of each positive RoI's logits of its class (mmdetection's ``use_mask``)."""
    if labels.numel() == 0:
        return logits.sum() * 0
    chosen = logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets.to(chosen))


def paste_masks(probs: Tensor, boxes: Tensor, size: tuple[int, int], chunk: int = 32) -> Tensor:
    """[K, 1, M, M] probabilities into [K, 1, h, w] at the boxes: mmdetection's ``_do_paste_mask``,
    pixel centre (x + 0.5, y + 0.5) sampled bilinearly at ((x + 0.5 − x0) / (x1 − x0)·2 − 1, ...), 0 outside."""
    h, w = size
    out = probs.new_zeros((probs.shape[0], 1, h, w))
    ys = torch.arange(h, device=probs.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=probs.device, dtype=torch.float32) + 0.5
    for start in range(0, probs.shape[0], chunk):
        b = boxes[start:start + chunk].float()
        gx = (xs[None] - b[:, :1]) / (b[:, 2:3] - b[:, :1]).clamp(min=1e-6) * 2 - 1
        gy = (ys[None] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]).clamp(min=1e-6) * 2 - 1
        grid = torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=3)
        out[start:start + chunk] = F.grid_sample(probs[start:start + chunk].float(), grid, align_corners=False)
    return out


def mask_logits(pool: LevelRoIAlign, head: nn.Module, predictor: nn.Module, maps, boxes, sizes) -> Tensor:
    """Per-class mask logits [R, K + 1, M, M] (fp32) of the RoIs ``boxes`` (a list per image)."""
    return to_float(predictor(head(pool(maps, boxes, sizes))))


def mask_losses(modules, maps, samples: Sequence[Samples], sizes, targets, cfg: tuple[int, bool, bool],
                warned: list[bool]) -> Tensor:
    """The mask loss of the positive RoIs of ``samples``; ``modules`` = (RoIAlign, convolutions, predictor),
    ``cfg`` = (mask size, aligned, binary targets)."""
    positives = [s.boxes[s.labels > 0] for s in samples]
    labels = torch.cat([s.labels[s.labels > 0] for s in samples])
    logits = mask_logits(*modules, maps, positives, sizes)
    size, aligned, binary = cfg
    with torch.autocast(logits.device.type, enabled=False):
        wanted = mask_targets(target_masks(targets, warned), samples, size, aligned, binary)
        return mask_loss(logits, labels, wanted.to(logits.device))


def with_masks(dets: list[dict[str, Tensor]], probs: Tensor, sizes) -> list[dict[str, Tensor]]:
    """Each detection's mask probabilities [R, M, M] (its class's), pasted into its image at the input size."""
    for d, p, size in zip(dets, probs.split([len(d["boxes"]) for d in dets]), sizes):
        d["masks"] = paste_masks(p[:, None], d["boxes"], size)
    return dets


def pick_class(logits: Tensor, labels: Tensor) -> Tensor:
    """The sigmoid of each RoI's logits of its label: [R, M, M]."""
    return logits[torch.arange(labels.numel(), device=logits.device), labels].sigmoid()


# ----------------------------------------------------------------------------- the RoI head of Faster / Mask R-CNN


class StandardRoIHeads(nn.Module):
    """mmdetection's ``StandardRoIHead``: sampled RoIs → RoIAlign 7 → two fcs → class scores and
    class-specific deltas (stds 0.1, 0.1, 0.2, 0.2); with ``mask`` the mask branch on the positives
    (training) and on the detections (test). Parameter names are torchvision's ``RoIHeads``."""

    def __init__(self, options, fpn_channels: int, num_classes: int, with_mask: bool = False) -> None:
        super().__init__()
        o = options
        self.box_roi_pool = LevelRoIAlign(ROI_LEVELS, ROI_STRIDES, 7, o.roi_sampling_ratio, o.roi_aligned)
        self.box_head = TwoMLPHead(fpn_channels * 7 * 7, o.representation_size)
        self.box_predictor = BoxPredictor(o.representation_size, num_classes + 1)
        self.proposal_matcher = MaxIoUMatcher(o.box_fg_iou_thresh, o.box_bg_iou_thresh, o.box_low_quality_matches, o.box_fg_iou_thresh)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(o.box_batch_size_per_image, o.box_positive_fraction)
        self.box_coder = coder(BOX_STDS)
        self.box_beta = o.box_beta
        self.test_cfg = (o.box_score_thresh, o.box_nms_thresh, o.box_detections_per_img)
        self.has_mask = with_mask
        self._warned = [False]
        if with_mask:
            self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_branch(o, fpn_channels, num_classes)
            self.mask_cfg = (2 * o.mask_roi_size, o.roi_aligned, o.mask_binary_targets)

    def losses(self, maps, proposals, sizes, targets) -> dict[str, Tensor]:
        samples = sample_rois(proposals, targets, self.proposal_matcher, self.fg_bg_sampler, self.box_coder)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(maps, [s.boxes for s in samples], sizes)))
        with torch.autocast(logits.device.type, enabled=False):
            cls, box = box_losses(logits, deltas, samples, self.box_beta)
        out = {"loss_classifier": cls, "loss_box_reg": box}
        if self.has_mask:
            modules = (self.mask_roi_pool, self.mask_head, self.mask_predictor)
            out["loss_mask"] = mask_losses(modules, maps, samples, sizes, targets, self.mask_cfg, self._warned)
        return out

    def detect(self, maps, proposals, sizes) -> list[dict[str, Tensor]]:
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(maps, proposals, sizes)))
        with torch.autocast(logits.device.type, enabled=False):
            dets = detections(logits, deltas, proposals, self.box_coder, sizes, *self.test_cfg)
        if not self.has_mask:
            return dets
        boxes = [d["boxes"] for d in dets]
        logits = mask_logits(self.mask_roi_pool, self.mask_head, self.mask_predictor, maps, boxes, sizes)
        with torch.autocast(logits.device.type, enabled=False):
            return with_masks(dets, pick_class(logits, torch.cat([d["labels"] for d in dets])), sizes)


# ----------------------------------------------------------------------------- the model


class MaxPoolP6(ExtraFPNBlock):
    """P6 = P5 subsampled by 2 (max-pool, kernel 1), named ``p6``: mmdetection's FPN with ``num_outs=5``
    and no extra convolutions (torchvision's ``LastLevelMaxPool`` calls it "pool")."""

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return [*p, F.max_pool2d(p[-1], kernel_size=1, stride=2, padding=0)], [*names, "p6"]


class TwoStageDetector(TaskModel, nn.Module):
    """backbone (trunk + FPN, maps ``p2``…``p6``) → ``rpn`` → ``roi_heads``, spoken to through :class:`TaskModel`.

    State-dict names are torchvision's Faster / Mask R-CNN's (``backbone.body``, ``backbone.fpn``,
    ``rpn.head``, ``roi_heads.box_head`` …), so their checkpoints load and the export is theirs.
    """

    def __init__(self, backbone: nn.Module, rpn: TwoStageRPN, roi_heads: nn.Module) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads

    def train_step(self, batch: Batch) -> StepOutput:
        maps = self.backbone(batch.images)
        proposals, rpn_losses = self.rpn(image_list(batch), maps, batch.targets)
        roi_losses = self.roi_heads.losses(maps, proposals, batch.image_sizes, batch.targets)
        return StepOutput({**rpn_losses, **roi_losses}, dict(maps))

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.backbone(batch.images), names)

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        maps = self.backbone(batch.images)
        proposals, _ = self.rpn(image_list(batch), maps)
        return self.roi_heads.detect(maps, proposals, batch.image_sizes)


def init_fpn(fpn: nn.Module, kind: str) -> None:
    """``xavier``: mmdetection's FPN init (Xavier-uniform, zero bias); ``kaiming``: torchvision's (kept)."""
    if kind != "xavier":
        return
    for module in fpn.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def init_box_head(head: TwoMLPHead, predictor: BoxPredictor, kind: str) -> None:
    """``mmdet``: ``Shared2FCBBoxHead``'s init (fcs Xavier-uniform, fc_cls N(0, 0.01), fc_reg N(0, 0.001),
    zero biases); ``torchvision``: PyTorch's Linear default (kept)."""
    if kind != "mmdet":
        return
    for fc in (head.fc6, head.fc7):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
    for fc, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(fc.weight, std=std)
        nn.init.zeros_(fc.bias)


def build_rpn(options, fpn_channels: int) -> TwoStageRPN:
    """The RPN: one anchor size per level (``anchor_sizes``, mmdetection's scale 8 × strides 4..64), ratios 0.5, 1, 2."""
    sizes = tuple((float(s) if options.exact_anchors else s,) for s in options.anchor_sizes)
    anchors = RetinaNetAnchors(sizes, ((0.5, 1.0, 2.0),) * len(sizes), exact=options.exact_anchors)
    return TwoStageRPN(anchors, FloatRPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), options)


def assemble(backbone: nn.Module, roi_heads: nn.Module, options, fpn_channels: int) -> TwoStageDetector:
    """The detector, initialised as ``fpn_init`` / ``box_init`` say."""
    init_fpn(backbone.fpn, options.fpn_init)
    heads = zip(roi_heads.box_heads, roi_heads.box_predictors) if hasattr(roi_heads, "box_heads") else \
        [(roi_heads.box_head, roi_heads.box_predictor)]
    for head, predictor in heads:
        init_box_head(head, predictor, options.box_init)
    return TwoStageDetector(backbone, build_rpn(options, fpn_channels), roi_heads)


# ----------------------------------------------------------------------------- mmdetection checkpoints


def neck_rules(backbone_rules: Sequence[tuple[str, str]] = ((r"backbone\.(.+)", r"backbone.body.\1"),)) -> list[tuple[str, str]]:
    """mmdetection 2.x's trunk, FPN (4 lateral and 4 output convs, P6 by max-pooling) and RPNHead → this model."""
    return [
        *backbone_rules,
        (r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2"),
        (r"neck\.fpn_convs\.(\d)\.conv\.(weight|bias)", r"backbone.fpn.layer_blocks.\1.0.\2"),
        (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
        (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
        (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    ]


def roi_rules(src: str, box: str, predictor: str, mask: Optional[str] = None, mask_predictor: Optional[str] = None) -> list[tuple[str, str]]:
    """mmdetection's ``Shared2FCBBoxHead`` (``src``.bbox_head) → ``box`` / ``predictor``, and with ``mask`` its
    ``FCNMaskHead`` (``src``.mask_head: convs.i.conv, upsample, conv_logits) → ``mask`` / ``mask_predictor``."""
    rules = [
        (rf"{src}\.bbox_head\.shared_fcs\.0\.(weight|bias)", rf"{box}.fc6.\1"),
        (rf"{src}\.bbox_head\.shared_fcs\.1\.(weight|bias)", rf"{box}.fc7.\1"),
        (rf"{src}\.bbox_head\.fc_cls\.(weight|bias)", rf"{predictor}.cls_score.\1"),
        (rf"{src}\.bbox_head\.fc_reg\.(weight|bias)", rf"{predictor}.bbox_pred.\1"),
    ]
    if mask:
        rules += [
            (rf"{src}\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)", rf"{mask}.\1.0.\2"),
            (rf"{src}\.mask_head\.upsample\.(weight|bias)", rf"{mask_predictor}.conv5_mask.\1"),
            (rf"{src}\.mask_head\.conv_logits\.(weight|bias)", rf"{mask_predictor}.mask_fcn_logits.\1"),
        ]
    return rules


def background_first(state: dict[str, Tensor], predictor: str, mask_predictor: Optional[str], agnostic: bool) -> None:
    """mmdetection's heads → torchvision's layout, in place: ``fc_cls`` has the background last (81 = 80 + 1),
    ours first; class-specific ``fc_reg`` has no background rows (4·80), ours do (zeros); ``conv_logits``
    has 80 maps, ours a background map 0 (zeros)."""
    for suffix in ("weight", "bias"):
        name = f"{predictor}.cls_score.{suffix}"
        if name in state:
            value = state[name]
            state[name] = torch.cat([value[-1:], value[:-1]])
        name = f"{predictor}.bbox_pred.{suffix}"
        if name in state and not agnostic:
            value = state[name]
            state[name] = torch.cat([torch.zeros_like(value[:4]), value])
        name = f"{mask_predictor}.mask_fcn_logits.{suffix}"
        if mask_predictor and name in state:
            value = state[name]
            state[name] = torch.cat([torch.zeros_like(value[:1]), value])


__all__ = [
    "DEFAULT_LEVELS",
    "LEVELS",
    "BoxPredictor",
    "LevelRoIAlign",
    "MaskFields",
    "MaxIoUMatcher",
    "MaxPoolP6",
    "RCNNFields",
    "StandardRoIHeads",
    "TwoStageDetector",
    "TwoStageRPN",
    "assemble",
    "background_first",
    "neck_rules",
    "roi_rules",
]
