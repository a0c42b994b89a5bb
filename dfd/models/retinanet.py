"""The RetinaNet family: torchvision's RetinaNet on a ResNet/ResNeXt FPN with levels P3–P7, built as mmdetection builds it.

Distillable maps: the FPN outputs ``p3``…``p7`` (strides 8…128), the outputs of
``backbone`` (the trunk and FPN), before the shared classification and box heads, as the
baselines' public RetinaNet configs distil them (FGD, MGD: ``neck.fpn_convs``; PKD: the neck's
outputs; see docs/choices.md).

Where torchvision's RetinaNet and mmdetection 2.x's ``retinanet_r50_fpn`` differ, each difference
is an option whose default is mmdetection's (the paper's toolchain) and whose other value is
torchvision's (whose COCO checkpoints then load): see :class:`RetinaNetOptions`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbones import BACKBONES
from .detection import DetectorOptions, FloatOutputs, Fp32AnchorGenerator, image_list, resnet_fpn
from .family import Batch, Family, OptionError, StepOutput, TaskModel, arch, check_choice, register_family, select_maps
from .mmdet import rename

RETINANET_LEVELS = ("p3", "p4", "p5", "p6", "p7")
ANCHORS_PER_POSITION = 9  # 3 aspect ratios x 3 octave scales
LOSS_NORMS = ("batch", "image")
FPN_INITS = ("xavier", "kaiming")


@dataclass
class RetinaNetOptions(DetectorOptions):
    """RetinaNet options; the defaults are mmdetection's ``retinanet_r50_fpn`` (PROTOCOLS.md §1).

    p6_from: P6 = conv3×3/2 on C5 (mmdetection's ``add_extra_convs='on_input'``) or on P5 (torchvision).
    p7_relu: P7 = conv3×3/2(ReLU(P6)) (torchvision) or conv3×3/2(P6) (mmdetection: ``relu_before_extra_convs=False``).
    background_class: a background column 0 in the classification head (torchvision's COCO models, 91
        columns) or one column per category (mmdetection: 80).
    exact_anchors: anchor sizes s·2^(k/3) and base anchors as computed (mmdetection: ``octave_base_scale=4``,
        ``scales_per_octave=3``) or rounded to whole pixels (torchvision).
    loss_norm: the focal and box losses summed over the batch and divided by its number of positive
        anchors (mmdetection's ``avg_factor``) or averaged per image first (torchvision).
    fpn_init: the FPN's (and P6/P7's) convolutions initialised Xavier-uniform (mmdetection) or
        Kaiming-uniform with a = 1 (torchvision).
    Test settings: ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``
    (candidates per level before NMS).
    """

    family: str = "retinanet"
    p6_from: str = arch("c5")
    p7_relu: bool = arch(False)
    background_class: bool = arch(False)
    exact_anchors: bool = arch(True)
    loss_norm: str = "batch"
    fpn_init: str = "xavier"
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000

    def check(self) -> None:
        super().check()
        check_choice("p6_from", self.p6_from, ("c5", "p5"))
        check_choice("loss_norm", self.loss_norm, LOSS_NORMS)
        check_choice("fpn_init", self.fpn_init, FPN_INITS)
        if not 0 <= self.score_thresh < 1:
            raise OptionError("score_thresh", self.score_thresh, "expected a number in [0, 1)")


class P6P7(ExtraFPNBlock):
    """P6 = conv3×3/2 on C5 (``source="c5"``) or on P5; P7 = conv3×3/2 on P6, after a ReLU if ``relu``.

    Parameter names match torchvision's ``LastLevelP6P7``, so its checkpoints load.
    """

    def __init__(self, in_channels: int, out_channels: int, source: str = "c5", relu: bool = True) -> None:
        super().__init__()
        if source not in ("c5", "p5"):
            raise ValueError(f"p6_from={source!r}; expected 'c5' or 'p5'")
        self.source, self.relu = source, relu
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(c[-1] if self.source == "c5" else p[-1])
        p7 = self.p7(F.relu(p6) if self.relu else p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


class RetinaNetAnchors(Fp32AnchorGenerator):
    """Anchors in fp32; with ``exact``, the base anchors are not rounded to whole pixels (mmdetection)."""

    def __init__(self, sizes, aspect_ratios, exact: bool = True) -> None:
        self.exact = exact  # read by generate_anchors, which AnchorGenerator's constructor calls
        super().__init__(sizes, aspect_ratios)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device="cpu") -> Tensor:
        if not self.exact:
            return super().generate_anchors(scales, aspect_ratios, dtype, device)
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class FloatRetinaNetHead(FloatOutputs, RetinaNetHead):
    """RetinaNet's heads with fp32 outputs."""


class RetinaNetModel(TaskModel, RetinaNet):
    """torchvision's RetinaNet, spoken to through :class:`TaskModel`.

    Anchors, losses and box decoding run in fp32 whatever the autocast dtype; the trunk, FPN and
    heads run in it. ``label_offset`` is 1 when the head has no background column (head column c
    is label c + 1), 0 otherwise; ``loss_norm`` as :class:`RetinaNetOptions`.
    """

    label_offset: int = 0
    loss_norm: str = "image"

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
            detections = self.postprocess_detections(split_head, split_anchors, batch.image_sizes)
        for d in detections:
            d["labels"] = d["labels"] + self.label_offset
        return detections

    def compute_loss(self, targets, head_outputs, anchors) -> dict[str, Tensor]:
        """Focal loss (α 0.25, γ 2) over the anchors not ignored, L1 on the positives' box deltas.

        loss_norm="batch":  L = Σ_images Σ_anchors ℓ / max(1, Σ_images #positives)   (mmdetection)
        loss_norm="image":  L = mean_images( Σ_anchors ℓ / max(1, #positives) )     (torchvision)
        """
        if self.label_offset:
            targets = [{**t, "labels": t["labels"] - self.label_offset} for t in targets]
        if self.loss_norm == "image":
            return super().compute_loss(targets, head_outputs, anchors)
        cls_sum, box_sum, positives = 0.0, 0.0, 0
        for t, logits, deltas, a in zip(targets, head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors):
            matched = self._match(t["boxes"], a)
            fg = matched >= 0
            target = torch.zeros_like(logits)
            target[fg, t["labels"][matched[fg]]] = 1.0
            valid = matched != self.proposal_matcher.BETWEEN_THRESHOLDS
            cls_sum = cls_sum + sigmoid_focal_loss(logits[valid], target[valid], reduction="sum")
            wanted = self.box_coder.encode_single(t["boxes"][matched[fg]], a[fg])
            box_sum = box_sum + F.l1_loss(deltas[fg], wanted, reduction="sum")
            positives = positives + fg.sum()
        norm = torch.clamp(torch.as_tensor(positives, dtype=torch.float32), min=1.0)
        return {"classification": cls_sum / norm, "bbox_regression": box_sum / norm}

    def _match(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        if boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        return self.proposal_matcher(box_ops.box_iou(boxes, anchors))


def _xavier_fpn(body: nn.Module) -> None:
    """mmdetection's FPN initialisation: Xavier-uniform weights (gain 1), zero biases, P6/P7 included."""
    for module in body.fpn.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def anchor_sizes(options: RetinaNetOptions) -> tuple[tuple[float, ...], ...]:
    """Each level's anchor sizes: base·2^(k/3), k = 0, 1, 2 (rounded down to whole pixels unless exact)."""
    octaves = [2 ** (k / 3) for k in range(3)]
    if options.exact_anchors:
        return tuple(tuple(s * o for o in octaves) for s in options.anchor_sizes)
    return tuple(tuple(int(s * o) for o in octaves) for s in options.anchor_sizes)


# mmdetection 2.x's RetinaNet (ResNet/ResNeXt + FPN + RetinaHead) -> this model, key by key.
MMDET_RULES = (
    (r"backbone\.(.+)", r"backbone.body.\1"),
    (r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.3\.conv\.(weight|bias)", r"backbone.fpn.extra_blocks.p6.\1"),
    (r"neck\.fpn_convs\.4\.conv\.(weight|bias)", r"backbone.fpn.extra_blocks.p7.\1"),
    (r"bbox_head\.cls_convs\.(\d)\.conv\.(weight|bias)", r"head.classification_head.conv.\1.0.\2"),
    (r"bbox_head\.reg_convs\.(\d)\.conv\.(weight|bias)", r"head.regression_head.conv.\1.0.\2"),
    (r"bbox_head\.retina_cls\.(weight|bias)", r"head.classification_head.cls_logits.\1"),
    (r"bbox_head\.retina_reg\.(weight|bias)", r"head.regression_head.bbox_reg.\1"),
)


def retinanet_from_mmdet(state, options: RetinaNetOptions) -> dict[str, Tensor]:
    """An mmdetection RetinaNet's weights as this model's.

    Both lay out the heads' outputs anchor by anchor (ratio-major, then octave scale, at each position,
    level by level) and the box deltas as (dx, dy, dw, dh) with unit stds, so only names change; with
    ``background_class`` a background column (zero weights, the focal prior's bias) is put before each
    anchor's 80 class columns.
    """
    out = rename(state, MMDET_RULES)
    if options.background_class:
        for name in ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"):
            value = out[name]
            per_anchor = value.reshape(ANCHORS_PER_POSITION, -1, *value.shape[1:])
            column = torch.zeros_like(per_anchor[:, :1])
            if name.endswith("bias"):
                column.fill_(-math.log((1 - 0.01) / 0.01))
            out[name] = torch.cat([column, per_anchor], dim=1).reshape(-1, *value.shape[1:])
    return out


def build_retinanet(options: RetinaNetOptions, num_classes: int) -> RetinaNetModel:
    """RetinaNet for ``num_classes`` categories, labelled 1..K, with aspect ratios 0.5, 1, 2 at each level."""
    c5 = BACKBONES[options.backbone].channels[-1]
    extra = P6P7(c5 if options.p6_from == "c5" else options.fpn_channels, options.fpn_channels, options.p6_from,
                 relu=options.p7_relu)
    body = resnet_fpn(options, {"layer2": "p3", "layer3": "p4", "layer4": "p5"}, extra)
    if options.fpn_init == "xavier":
        _xavier_fpn(body)
    sizes = anchor_sizes(options)
    anchors = RetinaNetAnchors(sizes, ((0.5, 1.0, 2.0),) * len(sizes), exact=options.exact_anchors)
    columns = num_classes + 1 if options.background_class else num_classes
    head = FloatRetinaNetHead(options.fpn_channels, anchors.num_anchors_per_location()[0], columns)
    model = RetinaNetModel(
        body, columns, anchor_generator=anchors, head=head, score_thresh=options.score_thresh,
        nms_thresh=options.nms_thresh, detections_per_img=options.detections_per_img,
        topk_candidates=options.topk_candidates,
    )
    model.label_offset = 0 if options.background_class else 1
    model.loss_norm = options.loss_norm
    return model


FAMILY = register_family(Family(
    name="retinanet",
    options=RetinaNetOptions,
    build=build_retinanet,
    task="detection",
    levels=RETINANET_LEVELS,
    default_levels=RETINANET_LEVELS,
    inherit_prefixes=("backbone.fpn.", "head."),
    from_mmdet=retinanet_from_mmdet,
    channels_last=True,  # tests/test_engine.py: the same losses and gradients
))
