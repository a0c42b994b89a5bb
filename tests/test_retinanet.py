"""RetinaNet as mmdetection builds it: each difference from torchvision an option with mmdetection's default."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config

from dfd.engine.config import load_config
from dfd.models.backbones import FrozenStatsBatchNorm2d
from dfd.models.retinanet import P6P7, RetinaNetOptions, build_retinanet

SMALL = dict(backbone="resnet18", fpn_channels=16, trainable_layers=5)


def _batch(model, n_boxes=(1, 3)):
    images = [torch.rand(3, 96, 128) for _ in n_boxes]
    targets = []
    for k in n_boxes:
        xy = torch.tensor([[8.0 + 20 * i, 10.0 + 10 * i] for i in range(k)])
        targets.append({"boxes": torch.cat([xy, xy + 40], 1), "labels": torch.arange(1, k + 1)})
    return model.prepare(images, targets, "cpu")


def test_defaults_are_mmdetections() -> None:
    o = RetinaNetOptions()
    assert (o.p6_from, o.p7_relu, o.background_class, o.exact_anchors, o.loss_norm, o.fpn_init, o.norm) == \
        ("c5", False, False, True, "batch", "xavier", "bn_eval")


def test_p7_takes_p6_without_a_relu_unless_asked() -> None:
    torch.manual_seed(0)
    block = P6P7(8, 8, relu=False)
    c5 = torch.randn(1, 8, 8, 8)
    (*_, p6, p7), _ = block([c5], [c5], ["p5"])
    assert torch.allclose(p7, block.p7(p6)) and not torch.allclose(p7, block.p7(p6.relu()))
    block.relu = True
    (*_, p6, p7), _ = block([c5], [c5], ["p5"])
    assert torch.allclose(p7, block.p7(p6.relu()))


def test_anchors_are_exact_octave_scales() -> None:
    exact = build_retinanet(RetinaNetOptions(**SMALL), 3).anchor_generator.cell_anchors[0]
    rounded = build_retinanet(RetinaNetOptions(**SMALL, exact_anchors=False), 3).anchor_generator.cell_anchors[0]
    widths = exact[:, 2] - exact[:, 0]  # ratio-major: (0.5, 1, 2) x (2^0, 2^(1/3), 2^(2/3))
    assert widths[3:6].tolist() == pytest.approx([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)])  # ratio 1: 4·2^(k/3)·8
    assert torch.equal(rounded, rounded.round()) and not torch.equal(exact, exact.round())


def test_one_column_per_category_and_labels_from_one() -> None:
    model = build_retinanet(RetinaNetOptions(**SMALL), 3).eval()
    assert model.head.classification_head.cls_logits.out_channels == 9 * 3
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 5.0)  # every class confident
    with torch.no_grad():
        labels = torch.cat([p["labels"] for p in model.predict(_batch(model))])
    assert labels.numel() and labels.min() >= 1 and labels.max() <= 3
    legacy = build_retinanet(RetinaNetOptions(**SMALL, background_class=True), 3)
    assert legacy.head.classification_head.cls_logits.out_channels == 9 * 4


def test_losses_are_normalised_by_the_batchs_positives() -> None:
    """L_batch = (S1 + S2) / (n1 + n2), from each image's own sum S_k over its n_k positives."""
    torch.manual_seed(0)
    model = build_retinanet(RetinaNetOptions(**SMALL), 3).train()
    batch = _batch(model, (1, 3))
    maps, anchors, head = model._head(batch)
    both = model.compute_loss(batch.targets, head, anchors)
    parts, counts = [], []
    for i in range(2):
        single = {k: v[i : i + 1] for k, v in head.items()}
        parts.append(model.compute_loss(batch.targets[i : i + 1], single, anchors[i : i + 1]))
        counts.append(float((model._match(batch.targets[i]["boxes"], anchors[i]) >= 0).sum()))
    for key in ("classification", "bbox_regression"):
        expected = sum(p[key] * n for p, n in zip(parts, counts)) / sum(counts)
        assert both[key].item() == pytest.approx(expected.item(), rel=1e-5)
    model.loss_norm = "image"
    per_image = model.compute_loss(batch.targets, head, anchors)["classification"]
    assert per_image.item() == pytest.approx(sum(p["classification"] for p in parts).item() / 2, rel=1e-5)


def test_fpn_is_xavier_initialised() -> None:
    torch.manual_seed(0)
    fpn = build_retinanet(RetinaNetOptions(**SMALL), 3).backbone.fpn
    for conv in [fpn.inner_blocks[0][0], fpn.layer_blocks[2][0], fpn.extra_blocks.p6, fpn.extra_blocks.p7]:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) and torch.all(conv.bias == 0)


def test_bn_eval_keeps_statistics_and_trains_affine_parameters() -> None:
    model = build_retinanet(RetinaNetOptions(**SMALL, norm="bn_eval"), 3).train()
    bn = model.backbone.body.layer2[0].bn1
    assert isinstance(bn, FrozenStatsBatchNorm2d)
    before = bn.running_mean.clone()
    loss = sum(model.train_step(_batch(model)).losses.values())
    loss.backward()
    assert torch.equal(bn.running_mean, before) and bn.weight.grad is not None


@pytest.mark.parametrize("overrides, clip", [
    (["distill=fgd"], 35.0), (["distill=mgd"], 35.0), (["distill=dfd"], 35.0), (["distill=pkd"], None),
    (["distill=pkd+dfd"], None), (["distill=none"], None), (["distill=dfd", "train=teacher"], None),
    (["distill=pkd", "scale=smoke"], 35.0),
])
def test_gradients_are_clipped_where_the_public_config_clips(overrides: list[str], clip: float | None) -> None:
    cfg = load_config(compose_config(["scale=full", *overrides]), require_teacher=False)
    assert cfg.schedule.clip_grad == clip
