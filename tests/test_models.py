"""Teacher and student builders, weights, taps and the Distiller."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfd.distill import FeatureDistillation
from dfd.engine.distiller import Distiller, probe_channels
from dfd.models import (
    BACKBONES,
    ComponentNotImplemented,
    FeatureTaps,
    WeightsError,
    build_detector,
    build_retinanet,
    inherit_matching,
    load_weights,
)

SMALL = dict(fpn_channels=16, norm="bn", trainable_layers=5, min_size=64, max_size=96, anchor_sizes=(16, 32, 64, 128, 256))
LEVELS = ["p3", "p4", "p5", "p6", "p7"]


def _batch(n: int = 2):
    images = [torch.rand(3, 64, 80) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])} for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_p3_to_p7_with_p6_from_c5(name: str) -> None:
    model = build_retinanet(name, 3, **SMALL)
    c5 = BACKBONES[name].channels[-1]
    assert model.backbone.fpn.extra_blocks.p6.in_channels == c5
    feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(feats) == LEVELS
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]  # strides 8..128
    assert all(f.shape[1] == 16 for f in feats.values())


def test_p6_from_p5_option_and_frozen_stages() -> None:
    model = build_retinanet("resnet18", 3, fpn_channels=16, p6_from="p5", trainable_layers=3)
    assert model.backbone.fpn.extra_blocks.p6.in_channels == 16
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.layer1.parameters()) and not body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in body.layer2.parameters() if p.dim() > 1)


def test_unknown_detector_is_not_implemented() -> None:
    with pytest.raises(ComponentNotImplemented, match="student.detector='faster_rcnn' is not implemented"):
        build_detector("faster_rcnn", "resnet50", 3, key="student")


def test_taps_record_levels_and_batched_input() -> None:
    model = build_retinanet("resnet18", 3, **SMALL).train()
    taps = FeatureTaps(model, ["p3", "p5"])
    images, targets = _batch()
    model(images, targets)
    assert list(taps.features) == ["p3", "p5"]
    assert taps.images.tensors.shape[0] == 2 and taps.features["p3"].shape[-2:] == (taps.images.tensors.shape[-2] // 8, taps.images.tensors.shape[-1] // 8)


def test_distiller_gradients_reach_student_and_modules_never_teacher() -> None:
    torch.manual_seed(0)
    student = build_retinanet("resnet18", 3, **SMALL)
    teacher = build_retinanet("resnet34", 3, **{**SMALL, "fpn_channels": 24})  # different widths: alignment
    losses = FeatureDistillation({"dfd": {"alpha": 1e-2, "beta": 1e-2}}, probe_channels(student, teacher, LEVELS))
    distiller = Distiller(student, teacher, losses, LEVELS).train()
    assert not distiller.teacher.training and all(not p.requires_grad for p in teacher.parameters())
    out = distiller(*_batch())
    assert {"classification", "bbox_regression", "distill/dfd/hd", "distill/dfd/ld"} <= set(out)
    sum(out.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    level = losses.losses["dfd"]["p3"]
    assert level.align.weight.grad is not None and all(p.grad is not None for p in level.transform.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert {id(p) for p in level.parameters()} <= trainable
    assert not trainable & {id(p) for p in teacher.parameters()}


def test_checkpoint_weights_round_trip(tmp_path: Path) -> None:
    a = build_retinanet("resnet18", 3, **SMALL)
    b = build_retinanet("resnet18", 3, **SMALL)
    path = tmp_path / "w.pth"
    torch.save({"model": a.state_dict()}, path)
    load_weights(b, str(path), "student.weights")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_weights_errors_name_key_and_file(tmp_path: Path) -> None:
    model = build_retinanet("resnet18", 3, **SMALL)
    with pytest.raises(WeightsError, match="teacher.weights: file '.*missing.pth' does not exist"):
        load_weights(model, str(tmp_path / "missing.pth"), "teacher.weights")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="teacher.weights: '.*corrupt.pth' is not a readable PyTorch checkpoint"):
        load_weights(model, str(bad), "teacher.weights")
    other = tmp_path / "other.pth"
    torch.save({"model": build_retinanet("resnet34", 3, **SMALL).state_dict()}, other)
    with pytest.raises(WeightsError, match="do not fit the model: .*unexpected"):
        load_weights(model, str(other), "teacher.weights")
    with pytest.raises(WeightsError, match="teacher.weights='NoSuch_Weights.X' is neither a file nor a torchvision weights name"):
        load_weights(model, "NoSuch_Weights.X", "teacher.weights")


def test_inherit_copies_only_matching_neck_and_head() -> None:
    teacher = build_retinanet("resnet34", 3, **SMALL)
    student = build_retinanet("resnet18", 3, **SMALL)
    copied = inherit_matching(student, teacher.state_dict(), ("backbone.fpn.", "head."))
    assert copied and all(k.startswith(("backbone.fpn.", "head.")) for k in copied)
    assert torch.equal(student.head.classification_head.cls_logits.weight, teacher.head.classification_head.cls_logits.weight)
    # resnet18 and resnet34 share widths, so the whole neck matches; the trunk is never touched
    assert not torch.equal(student.backbone.body.conv1.weight, teacher.backbone.body.conv1.weight)
