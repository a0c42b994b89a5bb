"""YOLOv6 0.2.0's training targets and losses: the ATSS and TAL assigners, VariFocal loss, GIoU/SIoU box loss.

Written from ``yolov6/models/loss.py``, ``yolov6/assigners/{atss_assigner,tal_assigner,assigner_utils}.py`` and
``yolov6/utils/figure_iou.py`` of tag 0.2.0. Shapes: B images, M ground-truth slots per image (padded; ``valid``
marks the real ones), A anchors of all levels. Boxes are xyxy pixels of the network input.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou_loss

IOU_TYPES = ("giou", "siou")
EPS = 1e-9


@dataclass
class Assignment:
    """Per anchor: ``labels`` [B, A] (class index; meaningless where not ``fg``), ``boxes`` [B, A, 4] (its ground
    truth's), ``scores`` [B, A, K] (soft one-hot targets), ``fg`` [B, A] bool."""

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg: Tensor


def anchor_iou(gt: Tensor, anchors: Tensor) -> Tensor:
    """IoU of every ground truth with every (well-formed) anchor box: [B, M, 4] × [A, 4] → [B, M, A] (torchvision)."""
    return box_iou(gt.reshape(-1, 4), anchors).reshape(*gt.shape[:2], -1)


def predicted_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """IoU of every ground truth with every predicted box, per image: [B, M, 4] × [B, A, 4] → [B, M, A].

    |G ∩ P| / (|G| + |P| − |G ∩ P| + eps) with widths and heights clipped at 0 (``assigner_utils.iou_calculator``):
    a predicted box may be inverted early in training, where torchvision's box_iou would give a negative union.
    """
    g, p = gt[:, :, None], boxes[:, None]
    inter = (torch.minimum(g[..., 2:], p[..., 2:]) - torch.maximum(g[..., :2], p[..., :2])).clamp(0).prod(-1)
    area_g = (g[..., 2:] - g[..., :2]).clamp(0).prod(-1)
    area_p = (p[..., 2:] - p[..., :2]).clamp(0).prod(-1)
    return inter / (area_g + area_p - inter + EPS)


def points_in_boxes(points: Tensor, gt: Tensor) -> Tensor:
    """Whether each anchor point lies strictly inside each ground truth: min(px − x1, py − y1, x2 − px, y2 − py) > eps; [B, M, A]."""
    p = points[None, None]
    deltas = torch.cat([p - gt[:, :, None, :2], gt[:, :, None, 2:] - p], -1)
    return deltas.amin(-1) > EPS


def resolve_conflicts(mask: Tensor, overlaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An anchor positive for several ground truths keeps the one it overlaps most (argmax over M of ``overlaps``).

    Returns the assigned ground truth per anchor [B, A], the foreground mask [B, A] and the one-hot mask [B, M, A].
    """
    multi = mask.sum(1, keepdim=True) > 1
    best = F.one_hot(overlaps.argmax(1), mask.shape[1]).permute(0, 2, 1).to(mask.dtype)
    mask = torch.where(multi, best, mask)
    return mask.argmax(1), mask.sum(1) > 0, mask


def gather_targets(labels: Tensor, gt: Tensor, index: Tensor, fg: Tensor, num_classes: int) -> Assignment:
    """Labels and boxes of each anchor's ground truth, and one-hot class targets on the foreground."""
    target_labels = labels.gather(1, index)
    target_boxes = gt.gather(1, index[..., None].expand(-1, -1, 4))
    scores = F.one_hot(target_labels.clamp(min=0), num_classes).float() * fg[..., None]
    return Assignment(target_labels, target_boxes, scores, fg)


def atss_assign(anchor_boxes: Tensor, counts: Sequence[int], labels: Tensor, gt: Tensor, valid: Tensor,
                pred_boxes: Tensor, num_classes: int, topk: int = 9) -> Assignment:
    """ATSS (Zhang et al., 2020) as YOLOv6 0.2.0 runs it for its first epochs.

    Candidates of ground truth g: on each level the min(topk, A_l) anchors whose box centres are nearest g's
    centre. Threshold t_g = mean + std (unbiased) of the candidates' IoU(anchor box, g). Positive: a candidate
    with IoU > t_g whose centre lies inside g. Target score: one-hot(class) · IoU(g, the anchor's predicted box).
    """
    b, m = gt.shape[:2]
    overlaps = anchor_iou(gt, anchor_boxes)
    centres = (anchor_boxes[:, :2] + anchor_boxes[:, 2:]) / 2
    gt_centres = (gt[..., :2] + gt[..., 2:]) / 2
    distances = torch.cdist(gt_centres.reshape(-1, 2), centres).reshape(b, m, -1)
    candidates = torch.zeros_like(overlaps, dtype=torch.bool)
    start = 0
    for n in counts:
        k = min(topk, n)
        idx = distances[..., start:start + n].topk(k, dim=-1, largest=False).indices + start
        candidates.scatter_(-1, idx, True)
        start += n
    cand_iou = overlaps[candidates].reshape(b, m, -1)
    threshold = cand_iou.mean(-1, keepdim=True) + cand_iou.std(-1, keepdim=True)
    positive = candidates & (overlaps > threshold) & points_in_boxes(centres, gt) & valid[..., None]
    index, fg, mask = resolve_conflicts(positive.float(), overlaps)
    out = gather_targets(labels, gt, index, fg, num_classes)
    ious = (predicted_iou(gt, pred_boxes) * mask).amax(1)
    out.scores = out.scores * ious[..., None]
    return out


def tal_assign(pred_scores: Tensor, pred_boxes: Tensor, points: Tensor, labels: Tensor, gt: Tensor, valid: Tensor,
               num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0) -> Assignment:
    """Task-aligned assignment (TOOD, Feng et al., 2021) as YOLOv6 0.2.0 runs it after the ATSS epochs.

    Alignment of anchor a with ground truth g: t = s^α · u^β, s the predicted score of g's class, u = IoU(g, the
    predicted box). Positive: among the topk anchors by t·[point inside g], those whose point lies inside g.
    Target score: one-hot(class) · max_g( t_ga · max_a' u_ga' / (max_a' t_ga' + eps) ) over the positives.
    """
    b, m = gt.shape[:2]
    overlaps = predicted_iou(gt, pred_boxes)
    cls_idx = labels.clamp(min=0)[..., None].expand(-1, -1, pred_scores.shape[1])
    scores = pred_scores.transpose(1, 2).gather(1, cls_idx)
    align = scores.pow(alpha) * overlaps.pow(beta)
    inside = points_in_boxes(points, gt)
    k = min(topk, align.shape[-1])
    top = torch.zeros_like(inside)
    top.scatter_(-1, (align * inside).topk(k, dim=-1).indices, True)
    positive = top & inside & valid[..., None]
    index, fg, mask = resolve_conflicts(positive.float(), overlaps)
    out = gather_targets(labels, gt, index, fg, num_classes)
    align = align * mask
    norm = align * (overlaps * mask).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + EPS)
    out.scores = out.scores * norm.amax(1)[..., None]
    return out


def varifocal_loss(logits: Tensor, target: Tensor, one_hot: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """VariFocal loss (Zhang et al., 2021), summed: Σ BCE(p, q) · w, w = α·p^γ·(1 − y) + q·y.

    p = sigmoid(logit), q the soft target (an IoU-aware score), y the one-hot of the assigned class. As in the
    release the weight is not detached (gradients flow through p^γ too); BCE on logits is the numerically
    stable form of the release's BCE on probabilities (equal values).
    """
    p = logits.sigmoid()
    weight = alpha * p.pow(gamma) * (1 - one_hot) + target * one_hot
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 − GIoU per pair: 1 − IoU + |C \\ (P ∪ G)| / |C|, C the smallest enclosing box (torchvision)."""
    return generalized_box_iou_loss(pred, target, reduction="none", eps=1e-7)


def siou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 − SIoU per pair (Gevorgyan, 2022), as ``figure_iou.IOUloss(iou_type='siou')``:

    SIoU = IoU − (Δ + Ω)/2. With (s_x, s_y) the centre offset, σ = |s|, c_w, c_h the enclosing box's size:
    angle Λ = cos(2·arcsin(min-angle sine) − π/2) where the sine is |s_x|/σ unless that exceeds √2/2 (then |s_y|/σ);
    distance Δ = Σ_{t∈x,y} (1 − exp(−(2 − Λ)·(s_t/c_t)²)); shape Ω = Σ_{t∈w,h} (1 − exp(−|t₁ − t₂|/max(t₁, t₂)))⁴.
    """
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = pred.unbind(-1), target.unbind(-1)
    w1, h1 = px2 - px1, py2 - py1 + eps
    w2, h2 = tx2 - tx1, ty2 - ty1 + eps
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(0) * (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = torch.max(px2, tx2) - torch.min(px1, tx1)
    ch = torch.max(py2, ty2) - torch.min(py1, ty1)
    sx = (tx1 + tx2 - px1 - px2) / 2
    sy = (ty1 + ty2 - py1 - py2) / 2
    sigma = torch.sqrt(sx ** 2 + sy ** 2) + eps
    sin_x, sin_y = sx.abs() / sigma, sy.abs() / sigma
    sin_alpha = torch.where(sin_x > math.sqrt(2) / 2, sin_y, sin_x)
    angle = torch.cos(2 * torch.arcsin(sin_alpha) - math.pi / 2)
    gamma = angle - 2
    distance = 2 - torch.exp(gamma * (sx / cw) ** 2) - torch.exp(gamma * (sy / ch) ** 2)
    omega_w = (w1 - w2).abs() / torch.max(w1, w2)
    omega_h = (h1 - h2).abs() / torch.max(h1, h2)
    shape = (1 - torch.exp(-omega_w)).pow(4) + (1 - torch.exp(-omega_h)).pow(4)
    return 1 - (iou - 0.5 * (distance + shape))


IOU_LOSSES = {"giou": giou_loss, "siou": siou_loss}


def pad_targets(targets: Sequence[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Ground truths as padded tensors: boxes [B, M, 4], class indices [B, M] (dataset label − 1), valid [B, M]."""
    m = max([len(t["labels"]) for t in targets] + [0])
    b = len(targets)
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.int64, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        k = len(t["labels"])
        boxes[i, :k] = t["boxes"].float()
        labels[i, :k] = t["labels"] - 1
        valid[i, :k] = True
    return boxes, labels, valid


class YoloLoss:
    """``ComputeLoss`` of 0.2.0: L = w_cls · VFL / Σq + w_iou · Σ_fg (Σ_k q_k) · (1 − IoU-type(pred, gt)) / Σq,
    Σq the sum of all target scores (no division when it is 0). Boxes regress in stride units."""

    def __init__(self, num_classes: int, options: Any) -> None:
        self.num_classes, self.o = num_classes, options
        self.box_loss = IOU_LOSSES[options.iou_type]

    def assign(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, anchor_boxes: Tensor, counts: Sequence[int],
               targets: Sequence[dict[str, Tensor]], epoch: int) -> Assignment:
        o = self.o
        gt, labels, valid = pad_targets(targets, scores.device)
        if gt.shape[1] == 0:
            zeros = torch.zeros(scores.shape[:2], dtype=torch.bool, device=scores.device)
            return Assignment(zeros.long(), pred_boxes.new_zeros(pred_boxes.shape), torch.zeros_like(scores), zeros)
        if epoch < o.atss_epochs:
            return atss_assign(anchor_boxes, counts, labels, gt, valid, pred_boxes, self.num_classes, o.atss_topk)
        return tal_assign(scores, pred_boxes, points, labels, gt, valid, self.num_classes, o.tal_topk, o.tal_alpha, o.tal_beta)

    def __call__(self, logits: Tensor, dists: Tensor, points: Tensor, anchor_boxes: Tensor, strides: Tensor,
                 counts: Sequence[int], targets: Sequence[dict[str, Tensor]], epoch: int) -> dict[str, Tensor]:
        from .yolov6 import distance_to_box

        o = self.o
        pred = distance_to_box(points / strides, dists)  # in strides
        with torch.no_grad():
            a = self.assign(logits.sigmoid(), pred * strides, points, anchor_boxes, counts, targets, epoch)
        total = a.scores.sum()
        norm = total if total > 0 else total.new_tensor(1.0)
        one_hot = F.one_hot(a.labels.clamp(min=0), self.num_classes).float() * a.fg[..., None]
        cls = varifocal_loss(logits, a.scores, one_hot, o.vfl_alpha, o.vfl_gamma) / norm
        if a.fg.any():
            weight = a.scores.sum(-1)[a.fg]
            box = (self.box_loss(pred[a.fg], (a.boxes / strides)[a.fg]) * weight).sum() / norm
        else:
            box = dists.sum() * 0.0
        return {"cls": o.cls_weight * cls, "iou": o.iou_weight * box}
