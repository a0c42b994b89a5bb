"""The two-stage families beyond Faster R-CNN: mmdetection checkpoints, masks end to end, the cascade's settings.

That our Faster R-CNN, given torchvision's option values, predicts as torchvision's ``FasterRCNN`` with the same
weights is tests/test_export.py's round trip (the exported weights go through torchvision's own builder).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY, compose_config
from torch import nn
from torchvision.models.swin_transformer import PatchMerging

from dfd.engine.config import load_config
from dfd.engine.train import run_training
from dfd.models import get_family
from dfd.models.backbones import DeformConv3x3
from dfd.models.mmdet import check_against
from dfd.models.swin import unfold_to_concat

FPN, REP, MASK = 16, 32, 8  # tiny widths: FPN channels, box-head fcs, mask-head convs
RESNET = dict(backbone="resnet18", backbone_weights=None, fpn_channels=FPN, norm="bn_eval", representation_size=REP)
SWIN = dict(backbone="swin_t", embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], fpn_channels=FPN, representation_size=REP)
OPTIONS = {
    "faster_rcnn": RESNET,
    "mask_rcnn": {**RESNET, "mask_channels": MASK},
    "cascade_mask_rcnn": {**RESNET, "mask_channels": MASK, "dcn_stages": [2, 3, 4]},
    "mask_rcnn_swin": {**SWIN, "mask_channels": MASK},
}


def _resnet18_trunk(dcn_stages: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """mmdetection's ResNet keys (torchvision's, no fc); a DCN conv2 adds ``conv2.conv_offset`` (DeformConv2dPack)."""
    state = {f"backbone.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    for stage in dcn_stages:
        for block in (0, 1):
            c = state[f"backbone.layer{stage}.{block}.conv2.weight"].shape[0]
            state[f"backbone.layer{stage}.{block}.conv2.conv_offset.weight"] = torch.randn(18, c, 3, 3)
            state[f"backbone.layer{stage}.{block}.conv2.conv_offset.bias"] = torch.randn(18)
    return state


def _swin_trunk(embed: int, depths, heads, window: int = 7) -> dict[str, torch.Tensor]:
    """mmdetection's ``SwinTransformer`` keys: patch_embed.{projection,norm}, stages.i.blocks.j.{norm1, attn.w_msa.
    {qkv, proj, relative_position_bias_table, relative_position_index}, norm2, ffn.layers.{0.0, 1}},
    stages.i.downsample.{norm, reduction} (no bias), norm0..3."""
    s = {"backbone.patch_embed.projection.weight": torch.randn(embed, 3, 4, 4), "backbone.patch_embed.projection.bias": torch.randn(embed)}
    s.update({f"backbone.patch_embed.norm.{p}": torch.randn(embed) for p in ("weight", "bias")})
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed * 2**i
        for j in range(depth):
            b = f"backbone.stages.{i}.blocks.{j}."
            s.update({f"{b}{n}.{p}": torch.randn(c) for n in ("norm1", "norm2") for p in ("weight", "bias")})
            s.update({f"{b}attn.w_msa.qkv.weight": torch.randn(3 * c, c), f"{b}attn.w_msa.qkv.bias": torch.randn(3 * c),
                      f"{b}attn.w_msa.proj.weight": torch.randn(c, c), f"{b}attn.w_msa.proj.bias": torch.randn(c),
                      f"{b}attn.w_msa.relative_position_bias_table": torch.randn((2 * window - 1) ** 2, h),
                      f"{b}attn.w_msa.relative_position_index": torch.randint(0, (2 * window - 1) ** 2, (window**2, window**2)),
                      f"{b}ffn.layers.0.0.weight": torch.randn(4 * c, c), f"{b}ffn.layers.0.0.bias": torch.randn(4 * c),
                      f"{b}ffn.layers.1.weight": torch.randn(c, 4 * c), f"{b}ffn.layers.1.bias": torch.randn(c)})
        if i < 3:
            s.update({f"backbone.stages.{i}.downsample.norm.{p}": torch.randn(4 * c) for p in ("weight", "bias")})
            s[f"backbone.stages.{i}.downsample.reduction.weight"] = torch.randn(2 * c, 4 * c)
        s.update({f"backbone.norm{i}.{p}": torch.randn(c) for p in ("weight", "bias")})
    return s


def _conv(state: dict, name: str, out: int, inp: int, k: int) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(out, inp, k, k), torch.randn(out)


def _fc(state: dict, name: str, out: int, inp: int, bias: torch.Tensor | None = None) -> None:
    state[f"{name}.weight"] = torch.randn(out, inp)
    state[f"{name}.bias"] = torch.randn(out) if bias is None else bias


def _heads(state: dict, widths, stages: int | None, mask: bool) -> None:
    """mmdetection 2.x's FPN (lateral_convs / fpn_convs .i.conv), RPNHead (rpn_conv, rpn_cls: 3 anchors with a
    sigmoid, rpn_reg), Shared2FCBBoxHead (shared_fcs.0/1; fc_cls 81 with the background last; fc_reg 4·80, or 4
    class-agnostic in the cascade) and FCNMaskHead (convs.i.conv, upsample, conv_logits: 80 maps), under
    ``roi_head.bbox_head.{s}`` / ``roi_head.mask_head.{s}`` when ``stages``. Biases tell columns apart."""
    for i, c in enumerate(widths):
        _conv(state, f"neck.lateral_convs.{i}.conv", FPN, c, 1)
        _conv(state, f"neck.fpn_convs.{i}.conv", FPN, FPN, 3)
    _conv(state, "rpn_head.rpn_conv", FPN, FPN, 3)
    _conv(state, "rpn_head.rpn_cls", 3, FPN, 1)
    _conv(state, "rpn_head.rpn_reg", 12, FPN, 1)
    for s in range(stages or 1):
        box = f"roi_head.bbox_head.{s}" if stages else "roi_head.bbox_head"
        _fc(state, f"{box}.shared_fcs.0", REP, FPN * 49)
        _fc(state, f"{box}.shared_fcs.1", REP, REP)
        _fc(state, f"{box}.fc_cls", 81, REP, torch.arange(81.0) + 1000 * s)
        n = 4 if stages else 320
        _fc(state, f"{box}.fc_reg", n, REP, torch.arange(float(n)) + 1000 * s)
        if mask:
            head = f"roi_head.mask_head.{s}" if stages else "roi_head.mask_head"
            for i in range(4):
                _conv(state, f"{head}.convs.{i}.conv", MASK, FPN if i == 0 else MASK, 3)
            state[f"{head}.upsample.weight"], state[f"{head}.upsample.bias"] = torch.randn(MASK, MASK, 2, 2), torch.randn(MASK)
            _conv(state, f"{head}.conv_logits", 80, MASK, 1)
            state[f"{head}.conv_logits.bias"] = torch.arange(80.0) + 1000 * s


def mmdet_state(family: str) -> dict[str, torch.Tensor]:
    """A random state dict laid out as mmdetection 2.x's model of ``family`` with the tiny widths above."""
    if family == "mask_rcnn_swin":
        o = OPTIONS[family]
        state = _swin_trunk(o["embed_dim"], o["depths"], o["num_heads"])
        widths = [o["embed_dim"] * 2**i for i in range(4)]
    else:
        state, widths = _resnet18_trunk(tuple(OPTIONS[family].get("dcn_stages", ()))), [64, 128, 256, 512]
    _heads(state, widths, 3 if family == "cascade_mask_rcnn" else None, mask=family != "faster_rcnn")
    return state


# mmdetection name -> ours, for one weight of each kind (the DCN offsets, the cascade's last stage, the Swin trunk)
PLACES = {
    "faster_rcnn": {"neck.lateral_convs.2.conv.weight": "backbone.fpn.inner_blocks.2.0.weight",
                    "neck.fpn_convs.3.conv.bias": "backbone.fpn.layer_blocks.3.0.bias",
                    "rpn_head.rpn_conv.weight": "rpn.head.conv.0.0.weight", "rpn_head.rpn_reg.weight": "rpn.head.bbox_pred.weight",
                    "backbone.layer4.1.bn2.running_var": "backbone.body.layer4.1.bn2.running_var",
                    "roi_head.bbox_head.shared_fcs.1.weight": "roi_heads.box_head.fc7.weight"},
    "mask_rcnn": {"roi_head.mask_head.convs.3.conv.weight": "roi_heads.mask_head.3.0.weight",
                  "roi_head.mask_head.upsample.weight": "roi_heads.mask_predictor.conv5_mask.weight"},
    "cascade_mask_rcnn": {"backbone.layer3.1.conv2.conv_offset.weight": "backbone.body.layer3.1.conv2.conv_offset.weight",
                          "backbone.layer2.0.conv2.weight": "backbone.body.layer2.0.conv2.weight",
                          "roi_head.bbox_head.2.shared_fcs.0.weight": "roi_heads.box_heads.2.fc6.weight",
                          "roi_head.mask_head.1.convs.0.conv.weight": "roi_heads.mask_heads.1.0.0.weight"},
    "mask_rcnn_swin": {"backbone.patch_embed.projection.weight": "backbone.body.features.0.proj.weight",
                       "backbone.stages.2.blocks.1.attn.w_msa.qkv.weight": "backbone.body.features.5.1.attn.qkv.weight",
                       "backbone.stages.3.blocks.0.ffn.layers.1.weight": "backbone.body.features.7.0.mlp.3.weight",
                       "backbone.norm3.bias": "backbone.body.norm3.bias"},
}


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "mask_rcnn_swin"])
def test_an_mmdetection_checkpoint_converts_and_loads_strictly(name: str) -> None:
    family = get_family(name)
    options = family.options(**OPTIONS[name])
    state = mmdet_state(name)
    converted = family.from_mmdet(state, options)
    model = family.build(options, 80)
    check_against(converted, model.state_dict())  # nothing missing, nothing without a place, shapes equal
    model.load_state_dict(converted)  # strict
    assert len(converted) == len(state)
    for src, dst in PLACES[name].items():
        assert torch.equal(converted[dst], state[src]), (src, dst)
    stages = [f"roi_heads.box_predictors.{s}" for s in range(3)] if name == "cascade_mask_rcnn" else ["roi_heads.box_predictor"]
    for s, predictor in enumerate(stages):
        cls = converted[f"{predictor}.cls_score.bias"] - 1000 * s  # background (mmdetection's column 80) first
        assert cls[0] == 80 and torch.equal(cls[1:], torch.arange(80.0))
        reg = converted[f"{predictor}.bbox_pred.bias"] - 1000 * s
        expected = torch.arange(4.0) if name == "cascade_mask_rcnn" else torch.cat([torch.zeros(4) - 1000 * s, torch.arange(320.0)])
        assert torch.equal(reg, expected)  # class-agnostic kept; class-specific: zero background rows first
    if name != "faster_rcnn":
        masks = [f"roi_heads.mask_predictors.{s}" for s in range(3)] if name == "cascade_mask_rcnn" else ["roi_heads.mask_predictor"]
        for s, predictor in enumerate(masks):
            logits = converted[f"{predictor}.mask_fcn_logits.bias"]
            assert logits[0] == 0 and torch.equal(logits[1:] - 1000 * s, torch.arange(80.0))


def _mmdet_patch_merging(x: torch.Tensor, norm: nn.LayerNorm, reduction: nn.Linear) -> torch.Tensor:
    """mmdetection's ``PatchMerging``: nn.Unfold(2, stride 2) of the [B, C, H, W] map (channel-major 4C), norm, reduction."""
    b, h, w, c = x.shape
    cols = nn.functional.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2)  # [B, 4C, HW/4]
    return reduction(norm(cols.transpose(1, 2))).reshape(b, h // 2, w // 2, -1)


def test_a_converted_swin_patch_merging_computes_as_mmdetections() -> None:
    torch.manual_seed(0)
    c = 6
    norm, reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    ours = PatchMerging(c)
    ours.norm.weight.data, ours.norm.bias.data = unfold_to_concat(norm.weight.data), unfold_to_concat(norm.bias.data)
    ours.reduction.weight.data = unfold_to_concat(reduction.weight.data)
    x = torch.randn(2, 8, 6, c)
    with torch.no_grad():
        assert torch.allclose(ours(x), _mmdet_patch_merging(x, norm, reduction), atol=1e-5)
        assert not torch.allclose(ours(x), _mmdet_patch_merging(x, ours.norm, ours.reduction), atol=1e-3)


def test_a_mask_rcnn_run_trains_on_the_masks_and_reports_segm_ap(tmp_path: Path, data_cache: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        record = run_training(compose_config([*TINY, "teacher=mask_rcnn_x101", "train=teacher"]), tmp_path / "run")
    assert not [w for w in seen if "'masks' is missing" in str(w.message)]  # the data gave the mask branch its masks
    assert {"bbox/AP", "segm/AP", "segm/AP50"} <= set(record["metrics"]) and "loss/loss_mask" in record["losses"]
    assert record["experiment"]["teacher"] == "mask_rcnn resnet34"


@pytest.mark.slow
def test_a_cascade_mask_rcnn_teaches_a_faster_rcnn_student_with_dfd(tmp_path: Path, data_cache: Path) -> None:
    cascade = ["student=faster_rcnn_r50", "teacher=cascade_mask_rcnn_x101"]
    teacher = run_training(compose_config([*TINY, *cascade, "train=teacher"]), tmp_path / "teacher")
    assert "segm/AP" in teacher["metrics"] and "loss/s2.loss_mask" in teacher["losses"]
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    record = run_training(compose_config([*TINY, *cascade, "distill=dfd", f"teacher.checkpoint={ckpt}"]), tmp_path / "dfd")
    assert record["experiment"]["teacher"] == "cascade_mask_rcnn resnet34" and "bbox/AP" in record["metrics"]
    assert {"distill/dfd/hd", "distill/dfd/ld"} <= set(record["losses"])


@pytest.mark.slow
@pytest.mark.parametrize("teacher, student, family", [
    ("mask_rcnn_swin_s", "faster_rcnn_r50", "mask_rcnn_swin"),
    ("reppoints_x101", "retinanet_r50", "reppoints"),
])
def test_a_checkpoint_of_each_new_family_teaches_a_student_of_another(tmp_path: Path, data_cache: Path, teacher: str,
                                                                       student: str, family: str) -> None:
    """A trained Swin (instance task) and RepPoints checkpoint each load as the teacher of another family."""
    pair = [f"student={student}", f"teacher={teacher}"]
    run_training(compose_config([*TINY, *pair, "train=teacher"]), tmp_path / "teacher")
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    record = run_training(compose_config([*TINY, *pair, "distill=dfd", f"teacher.checkpoint={ckpt}"]), tmp_path / "dfd")
    assert record["experiment"]["teacher"].split()[0] == family, record["experiment"]["teacher"]
    assert {"distill/dfd/hd", "distill/dfd/ld"} <= set(record["losses"]) and "bbox/AP" in record["metrics"]


def test_the_cascade_teacher_has_mmdetections_stages_and_dcn_on_c3_to_c5() -> None:
    """``dcn/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco`` on ``cascade_mask_rcnn_r50_fpn``."""
    full = load_config(compose_config(["scale=full", "teacher=cascade_mask_rcnn_x101", "distill=none"]), require_teacher=False).teacher
    assert (full.backbone, list(full.dcn_stages)) == ("resnext101_32x4d", [2, 3, 4])
    assert list(full.stage_iou_thresholds) == [0.5, 0.6, 0.7] and list(full.stage_loss_weights) == [1.0, 0.5, 0.25]
    assert [list(s) for s in full.stage_stds] == [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    assert (full.rpn_box_beta, full.box_beta, full.rpn_allowed_border, full.rpn_post_nms_top_n_train) == (1 / 9, 1.0, 0, 2000)
    smoke = load_config(compose_config(["scale=smoke", "teacher=cascade_mask_rcnn_x101", "distill=none"]), require_teacher=False).teacher
    model = get_family("cascade_mask_rcnn").build(smoke, 3)
    heads, body = model.roi_heads, model.backbone.body
    assert [(m.high_threshold, m.low_threshold, m.allow_low_quality_matches) for m in heads.matchers] == \
        [(0.5, 0.5, False), (0.6, 0.6, False), (0.7, 0.7, False)]
    assert [c.weights for c in heads.box_coders] == [tuple(1 / s for s in stds) for stds in full.stage_stds]
    assert heads.stage_weights == [1.0, 0.5, 0.25] and all(p.bbox_pred.out_features == 4 for p in heads.box_predictors)
    assert model.rpn.allowed_border == 0 and model.rpn.box_beta == pytest.approx(1 / 9)
    for stage in (1, 2, 3, 4):
        deformable = [isinstance(block.conv2, DeformConv3x3) for block in getattr(body, f"layer{stage}")]
        assert deformable == [stage >= 2] * len(deformable), stage


def test_the_swin_schedule_exempts_norms_and_position_tables_from_weight_decay() -> None:
    """``schedule=swin_1x``: mmdetection's ``mask_rcnn_swin-t-p4-w7_fpn_1x_coco`` AdamW and its paramwise_cfg."""
    from dfd.engine.optim import param_groups

    cfg = load_config(compose_config(["scale=full", "student=mask_rcnn_swin_t", "schedule=swin_1x", "distill=none"]))
    s = cfg.schedule
    assert (s.optimizer, s.lr, s.base_batch, s.weight_decay, s.epochs, list(s.steps), s.warmup_iters) == ("adamw", 1e-4, 16, 0.05, 12, [8, 11], 1000)
    student = load_config(compose_config(["scale=smoke", "student=mask_rcnn_swin_t", "distill=none"])).student
    model = get_family("mask_rcnn_swin").build(student, 3)
    groups = param_groups(model, weight_decay=s.weight_decay, no_decay_norm_bias=s.no_decay_norm_bias, no_decay_keys=s.no_decay_keys)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    tables = {n for n in names.values() if n.endswith("relative_position_bias_table")}
    assert tables and norms and exempt == norms | tables  # other biases (qkv, fcs, FPN) keep their decay
