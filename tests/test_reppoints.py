"""RepPoints as mmdetection 2.x builds it: head, moment boxes, both assigners, losses, conversion, a teacher and students."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config
from omegaconf import OmegaConf

from dfd.engine.checkpoint import load_teacher
from dfd.engine.config import ConfigError, load_config
from dfd.engine.convert import convert_mmdet_checkpoint
from dfd.engine.train import run_training
from dfd.models import WeightsError, get_family, inherit_matching
from dfd.models.backbones import DeformConv3x3, FrozenStatsBatchNorm2d, build_backbone
from dfd.models.mmdet import COCO_CATEGORY_IDS, COCO_CLASSES, check_against, coco_labels
from dfd.models.reppoints import (
    CONV_LEVELS,
    REPPOINTS_LEVELS,
    RepPointsOptions,
    build_reppoints,
    reppoints_from_mmdet,
)
from dfd.models.reppoints_targets import (
    IGNORED,
    NEGATIVE,
    grid_points,
    max_iou_assign,
    point_assign,
    points_to_boxes,
    valid_points,
)

SMALL = dict(backbone="resnet18", fpn_channels=16, gn_groups=8, norm="bn", trainable_layers=5)
REPPOINTS = ["student=reppoints_r50", "teacher=reppoints_x101"]


def _model(**kw):
    return build_reppoints(RepPointsOptions(**{**SMALL, **kw}), 3)


def _batch(model, n_boxes=(1, 3)):
    images = [torch.rand(3, 96, 128) for _ in n_boxes]
    targets = []
    for k in n_boxes:
        xy = torch.tensor([[8.0 + 20 * i, 10.0 + 10 * i] for i in range(k)])
        targets.append({"boxes": torch.cat([xy, xy + 40], 1), "labels": torch.arange(1, k + 1)})
    return model.prepare(images, targets, "cpu")


# ----------------------------------------------------------------------------- architecture


def test_defaults_are_mmdetections_gn_neck_head_config() -> None:
    o = RepPointsOptions()
    assert (o.neck_norm, o.head_norm, o.gn_groups, o.stacked_convs, o.num_points, o.transform_method) == ("gn", "gn", 32, 3, 9, "moment")
    assert (o.moment_mul, o.gradient_mul, o.point_base_scale, o.init_assigner_scale, o.init_pos_num) == (0.01, 0.1, 4, 4, 1)
    assert (o.refine_pos_iou, o.refine_neg_iou, o.refine_min_pos_iou, o.focal_alpha, o.focal_gamma) == (0.5, 0.4, 0.0, 0.25, 2.0)
    assert (o.smooth_l1_beta, o.loss_init_weight, o.loss_refine_weight) == (0.11, 0.5, 1.0)
    assert (o.score_thresh, o.nms_thresh, o.detections_per_img, o.topk_candidates) == (0.05, 0.5, 100, 1000)
    assert (o.norm, o.trainable_layers, o.fpn_channels) == ("bn_eval", 3, 256)  # frozen_stages=1, norm_eval
    family = get_family("reppoints")
    assert family.default_levels == CONV_LEVELS and set(family.levels) == set(REPPOINTS_LEVELS + CONV_LEVELS)
    assert family.inherit_prefixes == ("backbone.fpn.", "head.") and family.from_mmdet is reppoints_from_mmdet


def test_configs_give_the_papers_student_and_teacher() -> None:
    cfg = load_config(compose_config(["scale=full", *REPPOINTS, "distill=none", "teacher.checkpoint=auto"]), require_teacher=False)
    assert (cfg.student.backbone, cfg.student.backbone_weights, cfg.student.dcn_stages) == ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", [])
    assert (cfg.teacher.backbone, cfg.teacher.dcn_stages, cfg.teacher.public.metric) == ("resnext101_32x4d", [2, 3, 4], 44.2)
    smoke = load_config(compose_config(["scale=smoke", *REPPOINTS, "distill=none"]), require_teacher=False)
    assert (smoke.student.backbone, smoke.teacher.backbone, smoke.student.fpn_channels, smoke.student.norm) == ("resnet18", "resnet34", 64, "bn")
    assert smoke.teacher.dcn_stages == [] and smoke.student.gn_groups == 32


def test_pyramid_levels_strides_and_gn_neck() -> None:
    torch.manual_seed(0)
    model = _model()
    maps = model.backbone(torch.randn(1, 3, 128, 160))
    assert list(maps) == [*REPPOINTS_LEVELS, *CONV_LEVELS]
    assert [tuple(maps[k].shape[-2:]) for k in REPPOINTS_LEVELS] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    fpn = model.backbone.fpn
    assert fpn.fpn_convs[3].conv.in_channels == 512 and fpn.fpn_convs[4].conv.in_channels == 16  # P6 on C5, P7 on P6
    assert all(isinstance(m.gn, torch.nn.GroupNorm) and m.gn.num_groups == 8 and m.conv.bias is None for m in fpn.fpn_convs)
    for i, (lvl, pre) in enumerate(zip(REPPOINTS_LEVELS, CONV_LEVELS)):  # p*_conv: FGD's and MGD's neck.fpn_convs.i.conv
        assert torch.allclose(fpn.fpn_convs[i].gn(maps[pre]), maps[lvl], atol=1e-6)
    plain = _model(neck_norm="none", head_norm="none").backbone.fpn
    assert plain.fpn_convs[0].gn is None and plain.fpn_convs[0].conv.bias is not None


def test_head_layout_and_initialisation() -> None:
    torch.manual_seed(0)
    head = _model().head
    assert len(head.cls_convs) == len(head.reg_convs) == 3 and head.reppoints_cls_out.out_channels == 3
    assert head.reppoints_pts_init_out.out_channels == head.reppoints_pts_refine_out.out_channels == 18
    assert head.reppoints_cls_conv.bias is None and head.reppoints_pts_refine_conv.bias is None
    assert head.reppoints_cls_out.bias[0].item() == pytest.approx(-math.log(99))
    for conv in (head.reppoints_pts_init_out, head.reppoints_cls_conv, head.reppoints_pts_refine_conv, head.cls_convs[0].conv):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.2)  # mmdet <= 2.11's init_weights, DCNs too
    # mmdetection's dcn_base_offset: (y, x) pairs of the 3x3 grid, x fastest
    expected = [(y, x) for y in (-1, 0, 1) for x in (-1, 0, 1)]
    assert head.dcn_base_offset.view(9, 2).tolist() == [list(map(float, p)) for p in expected]
    assert head.moment_transfer.shape == (2,) and _model(transform_method="minmax").head.moment_transfer is None


def test_deformable_convolutions_sample_at_the_initial_points() -> None:
    """Initial points on the 3x3 grid dilated by 2: the DCN is a 3x3 convolution of dilation 2; refine adds init."""
    torch.manual_seed(0)
    head = _model(stacked_convs=1).head.eval()
    points = (2 * head.dcn_base_offset).view(-1)
    torch.nn.init.zeros_(head.reppoints_pts_init_out.weight)
    head.reppoints_pts_init_out.bias.data.copy_(points)
    x = torch.randn(1, 16, 12, 12)
    cls, init, refine = head.forward_level(x)
    cls_feat, pts_feat = head.cls_convs[0](x), head.reg_convs[0](x)
    hidden = F.relu(F.conv2d(cls_feat, head.reppoints_cls_conv.weight, padding=2, dilation=2))
    assert torch.allclose(cls, head.reppoints_cls_out(hidden), atol=1e-5)
    assert torch.allclose(init, points.view(1, -1, 1, 1).expand_as(init))
    refine_hidden = F.relu(F.conv2d(pts_feat, head.reppoints_pts_refine_conv.weight, padding=2, dilation=2))
    assert torch.allclose(refine, head.reppoints_pts_refine_out(refine_hidden) + init, atol=1e-5)


def test_initial_points_get_a_tenth_of_the_gradient_through_the_deformable_convolutions() -> None:
    grads = {}
    for mul in (0.1, 1.0):
        torch.manual_seed(0)
        head = _model(gradient_mul=mul).head
        cls, _, refine = head.forward_level(torch.randn(1, 16, 8, 8))
        (cls.sum() + refine.sum()).backward()  # refine = ... + detach(init): only the offsets reach init
        grads[mul] = head.reppoints_pts_init_out.bias.grad.clone()
    assert grads[1.0].abs().sum() > 0 and torch.allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------- geometry and assigners


def test_moment_boxes_from_hand_built_points() -> None:
    """Points on x ∈ {0, 6, 12}, y ∈ {0, 3, 6}: centre (6, 3); unbiased stds √27 and √(27/4)."""
    pts = torch.tensor([[x, y] for y in (0.0, 3.0, 6.0) for x in (0.0, 6.0, 12.0)])
    transfer = torch.zeros(2, requires_grad=True)
    box = points_to_boxes(pts, "moment", transfer, 0.01)
    sx, sy = math.sqrt(27), math.sqrt(27 / 4)
    assert box.tolist() == pytest.approx([6 - sx, 3 - sy, 6 + sx, 3 + sy])
    (box[2] - box[0]).backward()  # d(width)/dλ_w = 2·std_x·exp(λ_w), scaled by moment_mul
    assert transfer.grad.tolist() == pytest.approx([0.01 * 2 * sx, 0.0])
    doubled = points_to_boxes(pts, "moment", torch.tensor([math.log(2), 0.0]))
    assert doubled.tolist() == pytest.approx([6 - 2 * sx, 3 - sy, 6 + 2 * sx, 3 + sy])
    assert points_to_boxes(pts, "minmax").tolist() == [0.0, 0.0, 12.0, 6.0]
    assert points_to_boxes(pts, "partial_minmax").tolist() == [0.0, 0.0, 12.0, 3.0]  # the first 4 points
    assert points_to_boxes(pts.expand(2, 5, 9, 2), "moment", transfer).shape == (2, 5, 4)


def test_locations_and_their_validity() -> None:
    loc = grid_points(2, 3, 16)
    assert loc.tolist() == [[0, 0, 16], [16, 0, 16], [32, 0, 16], [0, 16, 16], [16, 16, 16], [32, 16, 16]]
    # a 40x70 image in a 64x96 batch: its own padding is 64x96 -> 4x6 of P4's 4x6; a 20x30 image's is 32x32 -> 2x2
    valid = valid_points([(40, 70), (20, 30)], [(8, 12), (4, 6)], [8, 16], 32)
    assert valid[0].all()
    first, second = valid[1][:96].view(8, 12), valid[1][96:].view(4, 6)
    assert first[:4, :4].all() and first.sum() == 16 and second[:2, :2].all() and second.sum() == 4


def test_point_assigner_on_hand_built_boxes() -> None:
    """Level of a box = trunc(mean log2(side / 4)), clamped; its nearest location there; ties to the first box."""
    points = torch.cat([grid_points(8, 8, 8), grid_points(4, 4, 16)])  # P3 then P4 of a 64x64 image
    gts = torch.tensor([
        [10.0, 10.0, 30.0, 30.0],  # 20x20: log2(5) = 2.3 -> level 2 -> clamped to P3; centre (20, 20) -> (16, 16) or (24, 24)
        [0.0, 0.0, 64.0, 64.0],  # 64x64: log2(16) = 4 -> P4; centre (32, 32) -> location (32, 32) on P4
        [13.0, 13.0, 29.0, 29.0],  # 16x16 -> P3, centre (21, 21): (24, 24) is nearer than for box 0's centre
    ])
    assigned = point_assign(points, gts, scale=4, pos_num=1)
    where = {int(i): tuple(points[i, :3].tolist()) for i in torch.nonzero(assigned >= 0).flatten()}
    owners = {where[i]: int(assigned[i]) for i in where}
    assert owners == {(16.0, 16.0, 8.0): 0, (24.0, 24.0, 8.0): 2, (32.0, 32.0, 16.0): 1}
    assert (assigned == NEGATIVE).sum() == points.shape[0] - 3
    twice = point_assign(points, torch.stack([gts[1], gts[1]]), 4, 1)
    assert twice.max().item() == 0 and (twice == 0).sum() == 1  # a tie goes to the box listed first
    three = point_assign(points, gts[1:2], 4, 3)
    assert (three == 0).sum() == 3 and set(points[three == 0, 2].tolist()) == {16.0}
    assert (point_assign(points, torch.zeros(0, 4)) == NEGATIVE).all()


def test_max_iou_assigner_on_hand_built_boxes() -> None:
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 with gt 0: positive
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45: ignored
        [0.0, 0.0, 10.0, 2.0],  # IoU 0.2: negative
        [50.0, 50.0, 60.0, 60.0],  # no overlap: negative
        [100.0, 100.0, 110.0, 103.0],  # IoU 0.3, gt 1's best: a low-quality positive
        [100.0, 100.0, 103.0, 110.0],  # IoU 0.3 too: gt_max_assign_all takes every box at the best IoU
    ])
    assert max_iou_assign(boxes, gts, 0.5, 0.4, 0.0).tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, 1, 1]
    assert max_iou_assign(boxes, gts, 0.5, 0.4, 0.0, low_quality=False).tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]
    assert max_iou_assign(boxes, gts, 0.5, 0.4, 0.35).tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]
    # mmdetection's min_pos_iou=0 quirk: a ground truth overlapping nothing takes every box it does not overlap
    lonely = torch.tensor([[300.0, 300.0, 310.0, 310.0]])
    assert max_iou_assign(boxes[:4], lonely).tolist() == [0, 0, 0, 0]
    assert (max_iou_assign(boxes, torch.zeros(0, 4)) == NEGATIVE).all()


# ----------------------------------------------------------------------------- losses and predictions


def test_losses_are_normalised_by_each_stages_positives_over_the_batch() -> None:
    """L = Σ_images S_k / Σ_images max(1, n_k), each stage with its own positives, the init loss weighted 0.5."""
    torch.manual_seed(0)
    model = _model(norm="bn_eval").train()  # batch-independent: each image's outputs as in the batch
    batch = _batch(model, (1, 3))
    both = model.train_step(batch).losses
    assert set(both) == {"loss_cls", "loss_pts_init", "loss_pts_refine"}
    _, points, (_, init, _) = model._forward(batch)
    candidates = model.boxes(init.detach())
    parts, n_init, n_refine = [], [], []
    for i in range(2):
        single = model.prepare([torch.zeros(3, 96, 128)], [batch.targets[i]], "cpu")
        single.images = batch.images[i : i + 1]  # the same normalised input
        parts.append(model.train_step(single).losses)
        gt = batch.targets[i]["boxes"]
        n_init.append(max(int((point_assign(torch.cat(points), gt) >= 0).sum()), 1))
        n_refine.append(max(int((max_iou_assign(candidates[i], gt) >= 0).sum()), 1))
    assert n_init == [1, 3]  # PointAssigner, pos_num 1: one location per box
    for key, counts in [("loss_pts_init", n_init), ("loss_pts_refine", n_refine), ("loss_cls", n_refine)]:
        expected = sum(p[key] * n for p, n in zip(parts, counts)) / sum(counts)
        assert both[key].item() == pytest.approx(expected.item(), rel=1e-4), key
    half = build_reppoints(RepPointsOptions(**{**SMALL, "norm": "bn_eval"}, loss_init_weight=0.25), 3)
    half.load_state_dict(model.state_dict())
    assert half.train().train_step(batch).losses["loss_pts_init"].item() == pytest.approx(both["loss_pts_init"].item() / 2, rel=1e-4)


def test_box_losses_are_smooth_l1_on_boxes_over_base_scale_times_stride() -> None:
    """One box, its location's initial points spread as the box: loss = w · smoothL1((pred − gt) / (4·s); β)."""
    torch.manual_seed(0)
    model = _model(transform_method="minmax").train()
    gt = torch.tensor([[4.0, 6.0, 30.0, 28.0]])
    pred = torch.tensor([[[0.0, 0.0], [32.0, 30.0]]])  # minmax box (0, 0, 32, 30)
    norm = torch.full((1, 4), 4.0 * 8.0)
    loss = model._box_loss(pred, torch.tensor([0]), gt, norm)
    diff = (torch.tensor([0.0, 0.0, 32.0, 30.0]) - gt[0]).abs() / 32
    expected = torch.where(diff < 0.11, 0.5 * diff**2 / 0.11, diff - 0.055).sum()
    assert loss.item() == pytest.approx(expected.item())


def test_predictions_are_labelled_from_one_clipped_and_capped() -> None:
    model = _model(detections_per_img=7).eval()
    torch.nn.init.constant_(model.head.reppoints_cls_out.bias, 5.0)  # every class confident
    batch = _batch(model, (1, 2))
    with torch.no_grad():
        preds = model.predict(batch)
    for p, (h, w) in zip(preds, batch.image_sizes):
        assert 0 < len(p["boxes"]) <= 7 and p["labels"].min() >= 1 and p["labels"].max() <= 3
        assert (p["boxes"][:, 0::2] <= w).all() and (p["boxes"][:, 1::2] <= h).all() and (p["boxes"] >= 0).all()
        assert torch.equal(p["scores"], p["scores"].sort(descending=True).values)
    torch.nn.init.constant_(model.head.reppoints_cls_out.bias, -10.0)
    with torch.no_grad():
        assert all(len(p["boxes"]) == 0 for p in model.predict(batch))  # nothing above score_thresh


def test_options_are_checked_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="student.gn_groups=24 is invalid: expected a divisor of fpn_channels=64"):
        load_config(compose_config(["scale=smoke", *REPPOINTS, "distill=none", "student.gn_groups=24"]), require_teacher=False)
    with pytest.raises(ConfigError, match="student.num_points=8 is invalid"):
        load_config(compose_config([*REPPOINTS, "distill=none", "student.num_points=8"]), require_teacher=False)
    with pytest.raises(ConfigError, match="student.transform_method='box' is invalid"):
        load_config(compose_config([*REPPOINTS, "distill=none", "student.transform_method=box"]), require_teacher=False)
    with pytest.raises(ConfigError, match="student.refine_neg_iou=0.6 is invalid"):
        load_config(compose_config([*REPPOINTS, "distill=none", "student.refine_neg_iou=0.6"]), require_teacher=False)
    cfg = load_config(compose_config([*REPPOINTS, "distill=fgd", "distill.levels=[p3_conv,p7_conv]", "teacher.checkpoint=auto"]),
                      require_teacher=False)
    assert cfg.distill.levels == ["p3_conv", "p7_conv"]


def test_inherit_copies_the_teachers_neck_and_head() -> None:
    teacher, student = _model(backbone="resnet34", dcn_stages=[2, 3, 4]), _model()
    copied = inherit_matching(student, teacher.state_dict(), get_family("reppoints").inherit_prefixes)
    assert "head.moment_transfer" in copied and "backbone.fpn.fpn_convs.3.gn.weight" in copied
    assert not any(k.startswith("backbone.body.") for k in copied)
    assert isinstance(teacher.backbone.body.layer2[0].conv2, DeformConv3x3)
    with torch.no_grad():  # the DCN teacher gives the student's maps, shape for shape
        maps = teacher.eval().distill_maps(_batch(teacher), list(CONV_LEVELS))
    assert [m.shape for m in maps.values()] == [m.shape for m in student.eval().distill_maps(_batch(student), list(CONV_LEVELS)).values()]


# ----------------------------------------------------------------------------- mmdetection checkpoints

WIDTH = 16


def mmdet_reppoints_state(width: int = WIDTH) -> dict[str, torch.Tensor]:
    """A state dict laid out as mmdetection 2.x's RepPointsDetector with a GN neck and head, random values.

    Trunk: mmdetection's ResNet names are torchvision's (no fc); its DCN blocks hold ``conv2.weight`` and
    ``conv2.conv_offset.{weight,bias}`` (``DeformConv2dPack``), here on a ResNet-18's c3-c5. Neck (FPN with
    ``norm_cfg=GN``): ``lateral_convs.{0,1,2}`` and ``fpn_convs.{0..4}`` ConvModules, each ``conv`` (no bias)
    and ``gn``; ``fpn_convs.3`` takes C5. Head (``RepPointsHead``): ``cls_convs``/``reg_convs.{0,1,2}`` (conv, gn),
    ``reppoints_cls_conv`` and ``reppoints_pts_refine_conv`` (mmcv ``DeformConv2d``, weight only),
    ``reppoints_cls_out`` (80 classes), ``reppoints_pts_init_conv``, ``reppoints_pts_{init,refine}_out`` (18 = 2·9
    offsets), ``moment_transfer`` (2).
    """
    g = torch.Generator().manual_seed(0)
    trunk = build_backbone("resnet18", norm="bn_eval", dcn_stages=(2, 3, 4)).state_dict()
    state = {f"backbone.{k}": torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v
             for k, v in trunk.items() if not k.startswith("fc.")}  # positive: running_var is among them

    def conv(name: str, out: int, inp: int, k: int, bias: bool = True) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g)
        if bias:
            state[f"{name}.bias"] = torch.randn(out, generator=g)

    def conv_gn(name: str, out: int, inp: int, k: int) -> None:
        conv(f"{name}.conv", out, inp, k, bias=False)
        state[f"{name}.gn.weight"], state[f"{name}.gn.bias"] = torch.randn(out, generator=g), torch.randn(out, generator=g)

    for i, c in enumerate((128, 256, 512)):
        conv_gn(f"neck.lateral_convs.{i}", width, c, 1)
    for i, c in enumerate((width, width, width, 512, width)):
        conv_gn(f"neck.fpn_convs.{i}", width, c, 3)
    for i in range(3):
        conv_gn(f"bbox_head.cls_convs.{i}", width, width, 3)
        conv_gn(f"bbox_head.reg_convs.{i}", width, width, 3)
    conv("bbox_head.reppoints_cls_conv", width, width, 3, bias=False)
    conv("bbox_head.reppoints_cls_out", 80, width, 1)
    conv("bbox_head.reppoints_pts_init_conv", width, width, 3)
    conv("bbox_head.reppoints_pts_init_out", 18, width, 1)
    conv("bbox_head.reppoints_pts_refine_conv", width, width, 3, bias=False)
    conv("bbox_head.reppoints_pts_refine_out", 18, width, 1)
    state["bbox_head.moment_transfer"] = torch.randn(2, generator=g)
    state["bbox_head.reppoints_cls_out.bias"] = torch.arange(80, dtype=torch.float32)  # column c says c
    return state


MMDET_OPTIONS = dict(backbone="resnet18", fpn_channels=WIDTH, gn_groups=8, dcn_stages=[2, 3, 4])


def test_every_mmdetection_weight_finds_its_place_and_each_class_its_coco_id() -> None:
    state = mmdet_reppoints_state()
    options = RepPointsOptions(**MMDET_OPTIONS)
    converted = reppoints_from_mmdet(state, options)
    model = build_reppoints(options, 80)
    check_against(converted, model.state_dict())
    assert set(converted) == set(model.state_dict())  # nothing dropped, nothing missing
    model.load_state_dict(converted)  # strict
    assert {id(v) for v in converted.values()} == {id(v) for v in state.values()}
    assert torch.equal(model.head.moment_transfer, state["bbox_head.moment_transfer"])
    assert torch.equal(model.backbone.body.layer3[1].conv2.conv_offset.weight, state["backbone.layer3.1.conv2.conv_offset.weight"])
    assert isinstance(model.backbone.body.layer3[1].bn1, FrozenStatsBatchNorm2d)
    labels = coco_labels(COCO_CLASSES)
    for c in (0, 17, 79):  # the model predicts label = column + 1, which is COCO_CLASSES[column]
        column = model.head.reppoints_cls_out.bias[c].item()
        assert column == c and labels[c + 1] == COCO_CATEGORY_IDS[c]
    fresh = build_reppoints(options, 80).eval()  # column c predicts label c + 1
    bias = torch.full((80,), -20.0)
    bias[17] = 20.0  # only mmdetection's class 17 ("horse") is confident
    fresh.head.reppoints_cls_out.bias.data.copy_(bias)
    fresh.head.reppoints_cls_out.weight.data.zero_()
    with torch.no_grad():
        pred = fresh.predict(fresh.prepare([torch.rand(3, 64, 64)], [{}], "cpu"))[0]
    assert pred["labels"].unique().tolist() == [18] and labels[18] == 19  # COCO's id of "horse"


def test_an_unplaceable_or_missing_mmdetection_weight_is_named() -> None:
    state = mmdet_reppoints_state()
    options = RepPointsOptions(**MMDET_OPTIONS)
    with pytest.raises(WeightsError, match=r"cannot place the mmdetection weight 'bbox_head.loss_scale'"):
        reppoints_from_mmdet({**state, "bbox_head.loss_scale": torch.ones(1)}, options)
    with pytest.raises(WeightsError, match=r"cannot place the mmdetection weight 'neck.fpn_convs.0.bn.weight'"):
        reppoints_from_mmdet({**state, "neck.fpn_convs.0.bn.weight": torch.ones(WIDTH)}, options)
    del state["bbox_head.moment_transfer"]
    model = build_reppoints(options, 80)
    with pytest.raises(WeightsError, match=r"has nothing for 1 weights of the model \(e.g. \['head.moment_transfer'\]\)"):
        check_against(reppoints_from_mmdet(state, options), model.state_dict())
    plain = build_reppoints(RepPointsOptions(**MMDET_OPTIONS, neck_norm="none"), 80)  # trained with GN: not this model
    with pytest.raises(WeightsError, match="has no place in the model|has nothing for"):
        check_against(reppoints_from_mmdet(mmdet_reppoints_state(), options), plain.state_dict())


def test_a_converted_checkpoint_loads_strictly_as_the_reppoints_teacher(tmp_path: Path) -> None:
    """scripts/convert_mmdet.py's path (model=reppoints_x101) on an mmdetection-named file, then load_teacher."""
    src, out = tmp_path / "mmdet.pth", tmp_path / "converted.pth"
    state = mmdet_reppoints_state()
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": state}, src)
    overrides = ["teacher.backbone=resnet18", f"teacher.fpn_channels={WIDTH}", "teacher.gn_groups=8"]  # dcn_stages: the config's
    cfg = OmegaConf.to_object(compose_config(["scale=full", "train=teacher", "data=coco", *REPPOINTS, *overrides]))
    assert list(cfg.teacher.dcn_stages) == [2, 3, 4]
    record = convert_mmdet_checkpoint(src, out, cfg)
    assert record["family"] == "reppoints" and record["num_classes"] == 80 and record["label_to_category"][18] == 19
    teacher = load_teacher(dataclasses.replace(cfg.teacher, checkpoint=str(out)), 80)
    own = teacher.state_dict()
    assert set(own) == {k for k in record["model"]}
    assert all(torch.equal(own[k], v) for k, v in record["model"].items())
    assert torch.equal(teacher.head.reppoints_pts_refine_conv.weight, state["bbox_head.reppoints_pts_refine_conv.weight"])
    assert torch.equal(teacher.backbone.fpn.lateral_convs[2].gn.bias, state["neck.lateral_convs.2.gn.bias"])
    broken = {k: v for k, v in state.items() if k != "bbox_head.reppoints_pts_init_conv.bias"}
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": broken}, src)
    with pytest.raises(WeightsError, match=r"head\.reppoints_pts_init_conv\.bias"):
        convert_mmdet_checkpoint(src, out, cfg)


# ----------------------------------------------------------------------------- end to end


# Table 2's RepPoints rows: FGD and MGD hook neck.fpn_convs.{0..4}.conv (their public RepPoints configs),
# PKD the neck outputs P3-P6 (mmrazor's pkd_fpn_reppoints_x101-dcn_reppoints_r50_2x_coco.py).
BASELINE_LEVELS = ["distill.fgd.levels=[p3_conv,p4_conv,p5_conv,p6_conv,p7_conv]",
                   "distill.mgd.levels=[p3_conv,p4_conv,p5_conv,p6_conv,p7_conv]", "distill.pkd.levels=[p3,p4,p5,p6]"]


@pytest.mark.slow
def test_a_smoke_teacher_then_dfd_fgd_mgd_and_pkd_students(tmp_path: Path, data_cache: Path) -> None:
    """teacher=reppoints_x101 (ResNet-34 at smoke scale) for 3 iterations, then a DFD student (Table 2's "Ours"
    row) and one student with FGD, MGD and PKD together on the levels of their Table 2 rows."""
    start = time.perf_counter()
    teacher = run_training(compose_config([*TINY, *REPPOINTS, "train=teacher"]), tmp_path / "teacher")
    assert teacher["experiment"]["teacher"] == "reppoints resnet34" and "bbox/AP" in teacher["metrics"]
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    runs = {"dfd": ["distill=dfd"], "fgd+mgd+pkd": ["distill=fgd", "distill.methods=[fgd,mgd,pkd]", *BASELINE_LEVELS]}
    for name, overrides in runs.items():
        record = run_training(compose_config([*TINY, *REPPOINTS, *overrides, "distill.inherit=true",
                                              f"teacher.checkpoint={ckpt}"]), tmp_path / name)
        assert record["experiment"]["student"] == "reppoints resnet18" and "bbox/AP" in record["metrics"]
        assert {"loss/loss_cls", "loss/loss_pts_init", "loss/loss_pts_refine"} <= set(record["losses"])
        for method in name.split("+"):
            assert {k for k in record["losses"] if k.startswith(f"distill/{method}/")}, (method, record["losses"])
    print(f"reppoints teacher + 2 students: {time.perf_counter() - start:.1f}s")
