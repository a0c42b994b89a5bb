"""The RepPoints family (Yang et al., ICCV 2019), as mmdetection 2.x's ``reppoints_moment`` configs build it.

A ResNet/ResNeXt trunk (deformable 3×3 convolutions in c3–c5 for the X101-DCN teacher), an FPN on
C3–C5 with P6 on C5 and P7 on P6 (``start_level=1, add_extra_convs='on_input'``) and GroupNorm in the
neck and the head (the ``gn-neck+head`` configs), and ``RepPointsHead``
(``mmdet/models/dense_heads/reppoints_head.py``): at every location of P3–P7 (strides 8…128)

- 3 stacked conv3×3-GN-ReLU for classification and 3 for points;
- the initial points: 9 offsets (y, x) from the location, in units of the level's stride
  (``reppoints_pts_init_conv`` → ReLU → ``reppoints_pts_init_out``, ``center_init``: from the centre);
- a deformable 3×3 convolution sampling at those points (offsets = points − the kernel's regular
  grid ``dcn_base_offset``, their gradient scaled by ``gradient_mul`` = 0.1) for the class scores
  (``reppoints_cls_conv`` → ``reppoints_cls_out``) and for the refined points (``reppoints_pts_refine_*``:
  offsets added to the detached initial points);
- boxes from point sets by the ``moment`` transform with its learnt ``moment_transfer``.

Distillable maps: ``p3_conv``…``p7_conv`` (distilled by default), the outputs of the FPN convolutions
before their GroupNorm: the modules FGD's and MGD's RepPoints configs hook (``neck.fpn_convs.{0..4}.conv``,
as for RetinaNet, whose default levels are those modules' outputs too); and the FPN outputs ``p3``…``p7``
after the GroupNorm (the neck's outputs, which mmrazor's PKD records: its rows set ``distill.pkd.levels``).
Without a neck norm the two are the same maps.

Geometry (locations, points, boxes, assignment, losses, post-processing) runs in fp32 under autocast;
the deformable convolutions and the 1×1 point outputs too (their offsets are positions).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import DeformConv2d, batched_nms, sigmoid_focal_loss

from .backbones import BACKBONES, build_backbone
from .detection import DetectorOptions, freeze_stages
from .family import Batch, Family, OptionError, StepOutput, TaskModel, arch, check_choice, check_positive, register_family, select_maps
from .mmdet import rename
from .reppoints_targets import IGNORED, TRANSFORMS, grid_points, max_iou_assign, point_assign, points_to_boxes, valid_points

REPPOINTS_LEVELS = ("p3", "p4", "p5", "p6", "p7")
CONV_LEVELS = tuple(f"{lvl}_conv" for lvl in REPPOINTS_LEVELS)  # before the neck's GroupNorm
POINT_STRIDES = (8, 16, 32, 64, 128)
NORMS = ("gn", "none")


@dataclass
class RepPointsOptions(DetectorOptions):
    """RepPoints options; defaults: mmdetection's ``reppoints_moment_r50_fpn_gn-neck+head_2x_coco.py`` (PROTOCOLS.md §4).

    neck_norm, head_norm: GroupNorm(``gn_groups``) after every FPN convolution / stacked head convolution
        (``gn``: the gn-neck+head configs) or none (``reppoints_moment_r50_fpn_1x_coco.py``).
    stacked_convs: conv3×3 layers of each branch of the head. point_feat_channels: width of the point
        convolutions (None: ``fpn_channels``; mmdetection 256 = the FPN's width). num_points: an odd square.
    transform_method: points to box, ``moment`` (with ``moment_transfer``, its gradient × ``moment_mul``),
        ``minmax`` or ``partial_minmax``. gradient_mul: gradient of the initial points through the
        deformable convolutions.
    point_base_scale: box losses on boxes / (scale · stride). init_assigner_scale, init_pos_num: the
        PointAssigner. refine_*_iou: the MaxIoUAssigner (low-quality matches on, ``gt_max_assign_all``).
    focal_*: the classification loss; smooth_l1_beta, loss_init_weight, loss_refine_weight: the box losses.
    Test settings: ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates`` (per
    level before NMS: ``nms_pre``). ``anchor_sizes`` (inherited) is unused: RepPoints has no anchors.
    """

    family: str = "reppoints"
    neck_norm: str = arch("gn")
    head_norm: str = arch("gn")
    gn_groups: int = arch(32)
    stacked_convs: int = arch(3)
    point_feat_channels: Optional[int] = arch(None)
    num_points: int = arch(9)
    transform_method: str = arch("moment")
    moment_mul: float = 0.01
    gradient_mul: float = 0.1
    point_base_scale: int = 4
    init_assigner_scale: int = 4
    init_pos_num: int = 1
    refine_pos_iou: float = 0.5
    refine_neg_iou: float = 0.4
    refine_min_pos_iou: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 0.11
    loss_init_weight: float = 0.5
    loss_refine_weight: float = 1.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000

    def check(self) -> None:
        super().check()
        check_choice("neck_norm", self.neck_norm, NORMS)
        check_choice("head_norm", self.head_norm, NORMS)
        check_choice("transform_method", self.transform_method, TRANSFORMS)
        for key in ("gn_groups", "stacked_convs", "point_base_scale", "init_assigner_scale", "init_pos_num",
                    "smooth_l1_beta", "detections_per_img", "topk_candidates"):
            check_positive(key, getattr(self, key))
        if self.point_feat_channels is not None:
            check_positive("point_feat_channels", self.point_feat_channels)
        if "gn" in (self.neck_norm, self.head_norm) and self.fpn_channels % self.gn_groups:
            raise OptionError("gn_groups", self.gn_groups, f"expected a divisor of fpn_channels={self.fpn_channels}")
        k = math.isqrt(self.num_points)
        if self.num_points < 1 or k * k != self.num_points or k % 2 == 0:
            raise OptionError("num_points", self.num_points, "expected an odd square (1, 9, 25, ...)")
        if self.transform_method == "partial_minmax" and self.num_points < 4:
            raise OptionError("num_points", self.num_points, "partial_minmax needs at least 4 points")
        for key in ("moment_mul", "gradient_mul", "refine_pos_iou", "refine_neg_iou", "refine_min_pos_iou", "focal_alpha",
                    "score_thresh", "nms_thresh"):
            if not 0 <= getattr(self, key) <= 1:
                raise OptionError(key, getattr(self, key), "expected a number in [0, 1]")
        if self.refine_neg_iou > self.refine_pos_iou:
            raise OptionError("refine_neg_iou", self.refine_neg_iou, f"expected at most refine_pos_iou={self.refine_pos_iou}")
        for key in ("focal_gamma", "loss_init_weight", "loss_refine_weight"):
            if getattr(self, key) < 0:
                raise OptionError(key, getattr(self, key), "expected a non-negative number")


# ----------------------------------------------------------------------------- neck


class ConvNorm(nn.Module):
    """mmcv's ``ConvModule`` as these configs use it: ``conv`` (biased only without a norm), then ``gn``
    (GroupNorm, when ``gn_groups``), then a ReLU when ``relu``. Names are mmdetection's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, gn_groups: Optional[int] = None,
                 relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=gn_groups is None)
        self.gn = nn.GroupNorm(gn_groups, cout) if gn_groups else None
        self.relu = relu

    def normed(self, x: Tensor) -> Tensor:
        """The norm and activation applied to this block's convolution output ``x``."""
        x = self.gn(x) if self.gn is not None else x
        return F.relu(x) if self.relu else x

    def forward(self, x: Tensor) -> Tensor:
        return self.normed(self.conv(x))


class RepPointsFPN(nn.Module):
    """mmdetection's ``FPN(start_level=1, add_extra_convs='on_input', num_outs=5)`` (``models/necks/fpn.py``).

    L_i = lateral_i(C_i) (conv1×1, GN), top-down L_{i-1} += nearest-upsample(L_i); P_i = fpn_i(L_i) (conv3×3, GN)
    for i = 3..5; P6 = fpn_3(C5), P7 = fpn_4(P6) (conv3×3/2, GN, no ReLU before P7). Xavier-uniform
    initialisation, zero biases (the FPN's ``init_cfg``). Returns P3–P7 and each fpn conv's output before its norm.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, gn_groups: Optional[int]) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvNorm(c, out_channels, 1, gn_groups=gn_groups) for c in in_channels)
        convs = [ConvNorm(out_channels, out_channels, 3, gn_groups=gn_groups) for _ in in_channels]
        convs.append(ConvNorm(in_channels[-1], out_channels, 3, 2, gn_groups))
        convs.append(ConvNorm(out_channels, out_channels, 3, 2, gn_groups))
        self.fpn_convs = nn.ModuleList(convs)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, feats: list[Tensor]) -> "OrderedDict[str, Tensor]":
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs, pre = [], []
        for i, block in enumerate(self.fpn_convs):
            source = laterals[i] if i < len(laterals) else feats[-1] if i == len(laterals) else outs[-1]
            pre.append(block.conv(source))
            outs.append(block.normed(pre[-1]))
        return OrderedDict([*zip(REPPOINTS_LEVELS, outs), *zip(CONV_LEVELS, pre)])


class TrunkWithFPN(nn.Module):
    """The trunk (``body``: its layer2–layer4 outputs C3–C5) and the FPN (``fpn``); maps by level name."""

    def __init__(self, body: nn.Module, fpn: RepPointsFPN) -> None:
        super().__init__()
        self.body, self.fpn = body, fpn

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(list(self.body(images).values()))


# ----------------------------------------------------------------------------- head


class RepPointsHead(nn.Module):
    """mmdetection's ``RepPointsHead`` (``models/dense_heads/reppoints_head.py``), ``center_init=True``, no grid points.

    Per level: cls = cls_out(ReLU(DCN_cls(cls_feat; o))), init = init_out(ReLU(init_conv(pts_feat))),
    refine = refine_out(ReLU(DCN_refine(pts_feat; o))) + detach(init), with o = init·g + detach(init)·(1 − g)
    − base, ``base`` the kernel's regular grid (``dcn_base_offset``: (y, x) pairs, row-major). Points are
    (y, x) offsets in stride units, as the deformable convolutions read them. Outputs are fp32.
    Initialisation (``init_weights`` of mmdetection 2.0–2.11, which trained the zoo's checkpoints and which
    FGD's code, on mmdet 2.11, runs): every convolution, the two deformable ones included, N(0, 0.01) with
    zero bias; the class bias −log(99) (prior 0.01). (mmdetection ≥ 2.12's ``init_cfg`` matches ``Conv2d``
    only and leaves mmcv's ``DeformConv2d`` at its uniform default.)
    """

    def __init__(self, num_classes: int, channels: int, point_channels: int, stacked_convs: int, num_points: int,
                 gradient_mul: float, gn_groups: Optional[int], moment: bool) -> None:
        super().__init__()
        self.gradient_mul = gradient_mul
        k = math.isqrt(num_points)
        self.cls_convs = nn.ModuleList(ConvNorm(channels, channels, 3, gn_groups=gn_groups, relu=True) for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvNorm(channels, channels, 3, gn_groups=gn_groups, relu=True) for _ in range(stacked_convs))
        self.reppoints_cls_conv = DeformConv2d(channels, point_channels, k, 1, k // 2, bias=False)
        self.reppoints_cls_out = nn.Conv2d(point_channels, num_classes, 1)
        self.reppoints_pts_init_conv = nn.Conv2d(channels, point_channels, 3, 1, 1)
        self.reppoints_pts_init_out = nn.Conv2d(point_channels, 2 * num_points, 1)
        self.reppoints_pts_refine_conv = DeformConv2d(channels, point_channels, k, 1, k // 2, bias=False)
        self.reppoints_pts_refine_out = nn.Conv2d(point_channels, 2 * num_points, 1)
        self.moment_transfer = nn.Parameter(torch.zeros(2)) if moment else None
        grid = torch.arange(k, dtype=torch.float32) - k // 2
        base = torch.stack([grid.repeat_interleave(k), grid.repeat(k)], dim=1)  # (y, x), x fastest
        self.register_buffer("dcn_base_offset", base.reshape(1, -1, 1, 1), persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.reppoints_cls_out.bias, -math.log((1 - 0.01) / 0.01))

    def forward_level(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(class logits [B, C, H, W], initial points [B, 2K, H, W], refined points [B, 2K, H, W]), fp32."""
        cls_feat, pts_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            pts_feat = conv(pts_feat)
        hidden = F.relu(self.reppoints_pts_init_conv(pts_feat))
        with torch.autocast(x.device.type, enabled=False):
            init = self.reppoints_pts_init_out(hidden.float())
            scaled = init * self.gradient_mul + init.detach() * (1 - self.gradient_mul)
            offset = scaled - self.dcn_base_offset
            cls_hidden = F.relu(self.reppoints_cls_conv(cls_feat.float(), offset))
            refine_hidden = F.relu(self.reppoints_pts_refine_conv(pts_feat.float(), offset))
            refine = self.reppoints_pts_refine_out(refine_hidden) + init.detach()
        return self.reppoints_cls_out(cls_hidden).float(), init, refine

    def forward(self, feats: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        return [self.forward_level(f) for f in feats]


class PointGenerator(nn.Module):
    """The head's locations (x, y, stride) in fp32: ``MlvlPointGenerator(point_strides, offset=0.)``."""

    def __init__(self, strides: Sequence[int] = POINT_STRIDES) -> None:
        super().__init__()
        self.strides = tuple(strides)

    def levels(self, sizes: Sequence[tuple[int, int]], strides: Sequence[int], device) -> list[Tensor]:
        return [grid_points(h, w, s, device) for (h, w), s in zip(sizes, strides)]

    def stride_of(self, size: tuple[int, int], padded: tuple[int, int]) -> int:
        """The stride s of a map of ``size`` on a ``padded`` input: (ceil(H/s), ceil(W/s)) = size, the first such s."""
        for s in self.strides:
            if (math.ceil(padded[0] / s), math.ceil(padded[1] / s)) == tuple(size):
                return s
        raise ValueError(f"a {tuple(size)} map fits none of the strides {self.strides} on a {tuple(padded)} input")

    def forward(self, image_list, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        """Per image, the [Σ H·W, 3] locations of ``feature_maps``, each map's stride read from its size."""
        padded = tuple(image_list.tensors.shape[-2:])
        sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        points = torch.cat(self.levels(sizes, [self.stride_of(s, padded) for s in sizes], feature_maps[0].device))
        return [points for _ in range(image_list.tensors.shape[0])]


# ----------------------------------------------------------------------------- model


def _flatten(head: list[tuple[Tensor, Tensor, Tensor]], points: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Logits [B, N, C] and the initial and refined point sets [B, N, K, 2] as image coordinates (x, y):
    p = offset(x, y) · stride + location (``offset_to_pts``)."""
    logits, sets = [], ([], [])
    for (cls, init, refine), loc in zip(head, points):
        b, c = cls.shape[:2]
        logits.append(cls.permute(0, 2, 3, 1).reshape(b, -1, c))
        for out, pts in zip(sets, (init, refine)):
            yx = pts.permute(0, 2, 3, 1).reshape(b, loc.shape[0], -1, 2)
            out.append(yx.flip(-1) * loc[None, :, None, 2:] + loc[None, :, None, :2])
    return torch.cat(logits, 1), torch.cat(sets[0], 1), torch.cat(sets[1], 1)


class RepPointsModel(TaskModel, nn.Module):
    """RepPoints through :class:`TaskModel`: ``backbone`` (trunk ``body`` + ``fpn``), ``head``, ``point_generator``.

    Predicted labels are the head's column + 1 (one column per category, labels 1..K).
    """

    def __init__(self, backbone: TrunkWithFPN, head: RepPointsHead, options: RepPointsOptions) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.point_generator = PointGenerator(POINT_STRIDES)
        self.options = options

    @property
    def anchor_generator(self) -> PointGenerator:
        """The locations play the anchors' part (the name the other one-stage family uses)."""
        return self.point_generator

    def boxes(self, point_sets: Tensor) -> Tensor:
        o = self.options
        return points_to_boxes(point_sets, o.transform_method, self.head.moment_transfer, o.moment_mul)

    def _forward(self, batch: Batch) -> tuple["OrderedDict[str, Tensor]", list[Tensor], tuple[Tensor, Tensor, Tensor]]:
        maps = self.backbone(batch.images)
        feats = [maps[lvl] for lvl in REPPOINTS_LEVELS]
        head = self.head(feats)
        points = self.point_generator.levels([f.shape[-2:] for f in feats], POINT_STRIDES, batch.images.device)
        with torch.autocast(batch.images.device.type, enabled=False):
            flat = _flatten(head, points)
        return maps, points, flat

    def train_step(self, batch: Batch) -> StepOutput:
        maps, points, (logits, init, refine) = self._forward(batch)
        sizes = [tuple(p.shape[-2:]) for p in (maps[lvl] for lvl in REPPOINTS_LEVELS)]
        valid = valid_points(batch.image_sizes, sizes, POINT_STRIDES, self.input_spec.size_divisible, batch.images.device)
        with torch.autocast(batch.images.device.type, enabled=False):
            losses = self.compute_loss(batch.targets, logits, init, refine, torch.cat(points), valid)
        return StepOutput(losses, dict(maps))

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.backbone(batch.images), names)

    def compute_loss(self, targets, logits: Tensor, init: Tensor, refine: Tensor, points: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """mmdetection's ``RepPointsHead.loss``, summed over levels and images:

        loss_cls        = Σ focal(logits, refine-stage labels) over non-ignored valid locations / n_refine
        loss_pts_init   = w_init   · Σ_pos smoothL1(box(init) / (b·s), gt / (b·s); β) / n_init
        loss_pts_refine = w_refine · Σ_pos smoothL1(box(refine) / (b·s), gt / (b·s); β) / n_refine
        with b = point_base_scale, s the location's stride, n = Σ_images max(1, #positives) of each stage;
        initial targets from the PointAssigner on the locations, refine targets (and labels) from the
        MaxIoUAssigner on the boxes of the detached initial points.
        """
        o = self.options
        norm = (o.point_base_scale * points[:, 2:3]).expand(-1, 4)
        with torch.no_grad():
            candidates = self.boxes(init.detach())
        cls_sum = init_sum = refine_sum = logits.new_zeros(())
        n_init = n_refine = 0
        for i, t in enumerate(targets):
            gt, labels, v = t["boxes"].float(), t["labels"], valid[i]
            first = torch.full_like(v, -1, dtype=torch.long)
            first[v] = point_assign(points[v], gt, o.init_assigner_scale, o.init_pos_num)
            second = torch.full_like(v, IGNORED, dtype=torch.long)
            second[v] = max_iou_assign(candidates[i][v], gt, o.refine_pos_iou, o.refine_neg_iou, o.refine_min_pos_iou)
            init_sum = init_sum + self._box_loss(init[i], first, gt, norm)
            refine_sum = refine_sum + self._box_loss(refine[i], second, gt, norm)
            pos, counted = second >= 0, second != IGNORED
            onehot = torch.zeros_like(logits[i])
            onehot[pos, labels[second[pos]] - 1] = 1.0
            cls_sum = cls_sum + sigmoid_focal_loss(logits[i][counted], onehot[counted], o.focal_alpha, o.focal_gamma, "sum")
            n_init += max(int((first >= 0).sum()), 1)
            n_refine += max(int(pos.sum()), 1)
        return {"loss_cls": cls_sum / n_refine, "loss_pts_init": o.loss_init_weight * init_sum / n_init,
                "loss_pts_refine": o.loss_refine_weight * refine_sum / n_refine}

    def _box_loss(self, point_sets: Tensor, assigned: Tensor, gt: Tensor, norm: Tensor) -> Tensor:
        """Σ over the assigned locations of smoothL1(box / norm, gt / norm; β) (``SmoothL1Loss``, mmdetection)."""
        pos = assigned >= 0
        boxes = self.boxes(point_sets[pos])
        return F.smooth_l1_loss(boxes / norm[pos], gt[assigned[pos]] / norm[pos], beta=self.options.smooth_l1_beta, reduction="sum")

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        maps, points, (logits, _, refine) = self._forward(batch)
        counts = [p.shape[0] for p in points]
        with torch.autocast(batch.images.device.type, enabled=False):
            return [self._detect(logits[i].split(counts), refine[i].split(counts), batch.image_sizes[i]) for i in range(len(batch))]

    def _detect(self, logits: Sequence[Tensor], point_sets: Sequence[Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
        """mmdetection's ``_get_bboxes_single``: per level the (location, class) pairs scoring above ``score_thresh``,
        the ``topk_candidates`` best; boxes of the refined points clipped to the image; class-wise NMS; the best
        ``detections_per_img``."""
        o = self.options
        boxes, scores, labels = [], [], []
        for cls, pts in zip(logits, point_sets):
            flat = cls.sigmoid().flatten()
            keep = torch.nonzero(flat > o.score_thresh).squeeze(1)
            top, order = flat[keep].topk(min(o.topk_candidates, keep.numel()))
            index = keep[order]
            where, label = index // cls.shape[1], index % cls.shape[1]
            box = self.boxes(pts[where])
            box = torch.stack([box[:, 0].clamp(0, size[1]), box[:, 1].clamp(0, size[0]),
                               box[:, 2].clamp(0, size[1]), box[:, 3].clamp(0, size[0])], dim=1)
            boxes.append(box), scores.append(top), labels.append(label)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        kept = batched_nms(boxes, scores, labels, o.nms_thresh)[: o.detections_per_img]
        return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept] + 1}


def build_reppoints(options: RepPointsOptions, num_classes: int) -> RepPointsModel:
    """RepPoints for ``num_classes`` categories, labelled 1..K."""
    trunk = build_backbone(options.backbone, weights=options.backbone_weights, norm=options.norm,
                           dcn_stages=tuple(options.dcn_stages))
    freeze_stages(trunk, options.trainable_layers)
    body = IntermediateLayerGetter(trunk, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    neck_groups = options.gn_groups if options.neck_norm == "gn" else None
    fpn = RepPointsFPN(BACKBONES[options.backbone].channels[1:], options.fpn_channels, neck_groups)
    head = RepPointsHead(num_classes, options.fpn_channels, options.point_feat_channels or options.fpn_channels,
                         options.stacked_convs, options.num_points, options.gradient_mul,
                         options.gn_groups if options.head_norm == "gn" else None, options.transform_method == "moment")
    return RepPointsModel(TrunkWithFPN(body, fpn), head, options)


# mmdetection 2.x's RepPointsDetector (ResNet/ResNeXt[-DCN] + FPN + RepPointsHead) -> this model, key by key.
MMDET_RULES = (
    (r"backbone\.(.+)", r"backbone.body.\1"),
    (r"neck\.(lateral|fpn)_convs\.(\d)\.(conv|gn)\.(weight|bias)", r"backbone.fpn.\1_convs.\2.\3.\4"),
    (r"bbox_head\.(cls|reg)_convs\.(\d+)\.(conv|gn)\.(weight|bias)", r"head.\1_convs.\2.\3.\4"),
    (r"bbox_head\.(reppoints_(?:cls|pts_init|pts_refine)_(?:conv|out))\.(weight|bias)", r"head.\1.\2"),
    (r"bbox_head\.moment_transfer", r"head.moment_transfer"),
)


def reppoints_from_mmdet(state, options: RepPointsOptions) -> dict[str, Tensor]:
    """An mmdetection RepPoints checkpoint's weights as this model's: only names change.

    Both lay out the class scores one column per category in mmdetection's COCO order (column c is
    label c + 1) and the points as (y, x) offsets in stride units; the trunk's names (DCN's
    ``conv2.conv_offset`` included) are torchvision's; ConvModule's ``conv`` / ``gn`` are kept.
    """
    return rename(state, MMDET_RULES)


FAMILY = register_family(Family(
    name="reppoints",
    options=RepPointsOptions,
    build=build_reppoints,
    task="detection",
    levels=REPPOINTS_LEVELS + CONV_LEVELS,
    default_levels=CONV_LEVELS,  # neck.fpn_convs.{0..4}.conv: FGD's and MGD's RepPoints configs
    inherit_prefixes=("backbone.fpn.", "head."),
    from_mmdet=reppoints_from_mmdet,
))
