"""RepPoints' geometry and training targets, as mmdetection 2.x computes them (all in fp32).

- :func:`grid_points`: the locations of one pyramid level (``MlvlPointGenerator(strides, offset=0)``).
- :func:`valid_points`: which locations lie inside each image's own padded extent (``valid_flags``).
- :func:`points_to_boxes`: a point set to a box (``RepPointsHead.points2bbox``: moment, minmax, partial_minmax).
- :func:`point_assign`: the initial stage's targets (``core/bbox/assigners/point_assigner.py``).
- :func:`max_iou_assign`: the refine stage's targets (``core/bbox/assigners/max_iou_assigner.py``).
- :func:`box_iou`: IoU with mmdetection's ``eps`` (``core/bbox/iou_calculators/iou2d_calculator.py``).

Assignments are per location: the 0-based index of the assigned ground-truth box, or
:data:`NEGATIVE` (background) or :data:`IGNORED` (neither: no loss at all), as torchvision's
``Matcher`` encodes them (mmdetection's ``gt_inds`` is 1-based with 0 for background, -1 ignored).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

NEGATIVE = -1
IGNORED = -2
TRANSFORMS = ("moment", "minmax", "partial_minmax")


def grid_points(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> Tensor:
    """The [H·W, 3] locations (x, y, stride) of a level, row-major: location (i, j) is (j·s, i·s).

    mmdetection's ``MlvlPointGenerator(point_strides, offset=0.)`` (``core/anchor/point_generator.py``),
    the order of the head's outputs flattened as ``permute(0, 2, 3, 1)``.
    """
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1), torch.full_like(xx.reshape(-1), float(stride))], dim=1)


def valid_points(image_sizes: Sequence[tuple[int, int]], feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                 size_divisible: int, device: torch.device | str = "cpu") -> Tensor:
    """[N_images, Σ H·W] flags: a location is valid if it lies within its image's own padded extent.

    mmdetection pads each image to a multiple of 32 (``pad_shape``) before batching; on each level the
    first ``min(ceil(pad_h / s), H)`` rows and ``min(ceil(pad_w / s), W)`` columns are valid
    (``MlvlPointGenerator.valid_flags``). Invalid locations take part in no loss.
    """
    rows = []
    for h, w in image_sizes:
        pad_h, pad_w = (math.ceil(v / size_divisible) * size_divisible for v in (h, w))
        flags = []
        for (fh, fw), s in zip(feature_sizes, strides):
            vh, vw = min(math.ceil(pad_h / s), fh), min(math.ceil(pad_w / s), fw)
            flag = torch.zeros(fh, fw, dtype=torch.bool, device=device)
            flag[:vh, :vw] = True
            flags.append(flag.reshape(-1))
        rows.append(torch.cat(flags))
    return torch.stack(rows)


def points_to_boxes(points: Tensor, method: str = "moment", moment_transfer: Tensor | None = None,
                    moment_mul: float = 0.01) -> Tensor:
    """Point sets [..., K, 2] (x, y) to boxes [..., 4] (x1, y1, x2, y2): ``RepPointsHead.points2bbox``.

    moment:  centre = mean of the points; half-width = std_x · exp(λ_w), half-height = std_y · exp(λ_h),
             std unbiased (``torch.std``), λ = ``moment_transfer``, a learnt parameter whose gradient is
             scaled by ``moment_mul``: λ_used = λ·m + detach(λ)·(1 − m).
    minmax:  the points' bounding box;  partial_minmax: the bounding box of the first 4 points.
    """
    if points.numel() == 0:  # no point set: no box (kept on the graph, as mmdetection's empty losses)
        return points.new_zeros((*points.shape[:-2], 4)) + points.sum() * 0
    x, y = points[..., 0], points[..., 1]
    if method == "partial_minmax":
        x, y = x[..., :4], y[..., :4]
    if method in ("minmax", "partial_minmax"):
        return torch.stack([x.amin(-1), y.amin(-1), x.amax(-1), y.amax(-1)], dim=-1)
    if method != "moment":
        raise ValueError(f"transform_method={method!r}; expected one of {', '.join(TRANSFORMS)}")
    if moment_transfer is None:
        raise ValueError("the moment transform needs the moment_transfer parameter")
    cx, cy = x.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
    std_x, std_y = torch.std(x - cx, dim=-1), torch.std(y - cy, dim=-1)
    transfer = moment_transfer * moment_mul + moment_transfer.detach() * (1 - moment_mul)
    half_w, half_h = std_x * torch.exp(transfer[0]), std_y * torch.exp(transfer[1])
    cx, cy = cx.squeeze(-1), cy.squeeze(-1)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """[M, N] IoU = area(a ∩ b) / max(area(a ∪ b), eps): ``bbox_overlaps`` (mmdetection, no +1 on widths)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - inter).clamp(min=eps)
    return inter / union


def point_assign(points: Tensor, gt_boxes: Tensor, scale: float = 4, pos_num: int = 1) -> Tensor:
    """The initial stage's targets: [N] index of the ground truth each location is assigned, or NEGATIVE.

    mmdetection's ``PointAssigner`` (``core/bbox/assigners/point_assigner.py``), for ``points`` [N, 3]
    (x, y, stride):

    1. a box of size (w, h) belongs to level l = trunc((log2(w / scale) + log2(h / scale)) / 2), clamped to
       the levels present (level of a location: log2 of its stride);
    2. on that level, its ``pos_num`` locations nearest to its centre c, by d = ‖(p − c) / (w, h)‖, are its
       candidates;
    3. a location that is a candidate of several boxes goes to the nearest, and on a tie to the box listed
       first (mmdetection loops over the boxes and overwrites only on a strictly smaller distance).
    """
    n, g = points.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), NEGATIVE, dtype=torch.long, device=points.device)
    if n == 0 or g == 0:
        return assigned
    points_lvl = torch.log2(points[:, 2]).int()
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
    gt_lvl = ((torch.log2(wh[:, 0] / scale) + torch.log2(wh[:, 1] / scale)) / 2).int()
    gt_lvl = gt_lvl.clamp(min=int(points_lvl.min()), max=int(points_lvl.max()))
    dist = ((points[None, :, :2] - centres[:, None]) / wh[:, None]).norm(dim=-1)  # [G, N]
    dist = dist.masked_fill(gt_lvl[:, None] != points_lvl[None, :], float("inf"))
    k = min(pos_num, n)
    nearest, index = dist.topk(k, dim=1, largest=False)
    candidates = torch.full_like(dist, float("inf")).scatter_(1, index, nearest)
    best, owner = candidates.min(dim=0)  # the first box at the smallest distance
    taken = torch.isfinite(best)
    assigned[taken] = owner[taken]
    return assigned


def max_iou_assign(boxes: Tensor, gt_boxes: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4, min_pos_iou: float = 0.0,
                   low_quality: bool = True) -> Tensor:
    """The refine stage's targets: [N] assigned ground-truth index, NEGATIVE or IGNORED, for ``boxes`` [N, 4].

    mmdetection's ``MaxIoUAssigner`` (``core/bbox/assigners/max_iou_assigner.py``, ``gt_max_assign_all=True``):

    1. every box IGNORED; those whose best IoU is in [0, neg_iou) NEGATIVE;
    2. those whose best IoU ≥ pos_iou go to that ground truth (the first on a tie);
    3. (low_quality) each ground truth i whose best IoU m_i ≥ min_pos_iou also takes every box with
       IoU = m_i, later ground truths overwriting earlier ones. With min_pos_iou = 0 (RepPoints) a ground
       truth overlapping no box at all takes every box it does not overlap, as mmdetection does.
    """
    n, g = boxes.shape[0], gt_boxes.shape[0]
    if g == 0 or n == 0:
        return torch.full((n,), NEGATIVE, dtype=torch.long, device=boxes.device)
    overlaps = box_iou(gt_boxes, boxes)  # [G, N]
    best, argbest = overlaps.max(dim=0)
    assigned = torch.full((n,), IGNORED, dtype=torch.long, device=boxes.device)
    assigned[(best >= 0) & (best < neg_iou)] = NEGATIVE
    positive = best >= pos_iou
    assigned[positive] = argbest[positive]
    if low_quality:
        gt_best = overlaps.max(dim=1).values  # [G]
        hits = (overlaps == gt_best[:, None]) & (gt_best[:, None] >= min_pos_iou)
        order = torch.arange(g, device=boxes.device)[:, None].expand(g, n)
        last = torch.where(hits, order, torch.full_like(order, -1)).max(dim=0).values
        assigned = torch.where(last >= 0, last, assigned)
    return assigned
