"""YOLOv6 (release 0.2.0): network sizes, RepVGG re-parameterisation, assigners and losses on hand cases, the
yolo data pipeline (letterbox, mosaic, evaluation mapping) and a few-image overfit."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, evaluate_on_cpu, train_steps
from PIL import Image
from torch import nn

from dfd.data import DataError, DataNeeds, build_datasets, collate
from dfd.data.yolo import YoloDataOptions, YoloDataset, letterbox, yolo_options
from dfd.models import OptionError, TaskModel, get_family
from dfd.models.yolov6 import (
    RepVGGBlock,
    YoloV6Model,
    YoloV6Options,
    build_yolov6,
    channels_and_repeats,
    from_yolov6,
    reparameterize,
)
from dfd.models.yolov6_loss import (
    atss_assign,
    giou_loss,
    resolve_conflicts,
    siou_loss,
    tal_assign,
    varifocal_loss,
)

TINY = dict(width=0.0625)  # every channel count rounds up to 8


def _randomise_bn(model: nn.Module) -> None:
    """BatchNorm statistics and affine parameters away from their identity initialisation."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


# ----------------------------------------------------------------------------- network


def test_channels_and_repeats_are_the_releases() -> None:
    c, n = channels_and_repeats(0.33, 0.375)  # configs/yolov6t.py
    assert c == [24, 48, 96, 192, 384, 96, 48, 48, 96, 96, 192]
    assert n == [1, 2, 4, 6, 2, 4, 4, 4, 4]
    c, _ = channels_and_repeats(0.33, 0.50)  # configs/yolov6s.py
    assert (c[6], c[8], c[10]) == (64, 128, 256)


def test_s_has_the_published_deployed_size() -> None:
    """YOLOv6-S of 0.2.0: 17.2 M parameters deployed (README; RepVGG and BatchNorm folded into the convolutions)."""
    model = reparameterize(build_yolov6(YoloV6Options(variant="s", width=0.5), 80).eval())
    count = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else m.out_channels)
                for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert round(count / 1e6, 1) == 17.2


def test_levels_strides_and_widths() -> None:
    torch.manual_seed(0)
    model = build_yolov6(YoloV6Options(variant="t", width=0.375), 3)
    maps = model.features(torch.zeros(1, 3, 64, 96))
    assert list(maps) == list(get_family("yolov6").levels) == ["p3", "p4", "p5"]
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(48, 8, 12), (96, 4, 6), (192, 2, 3)]
    assert model.input_spec.mean == (0.0, 0.0, 0.0) and model.input_spec.std == (1.0, 1.0, 1.0)
    assert model.input_spec.pad_value == pytest.approx(114 / 255)


@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 1), (8, 16, 2)])
def test_repvgg_block_folds_into_one_conv(cin: int, cout: int, stride: int) -> None:
    torch.manual_seed(0)
    block = RepVGGBlock(cin, cout, stride)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, cin, 12, 10)
    before = block(x)
    block.reparameterize()
    assert block.rbr_reparam is not None and not hasattr(block, "rbr_dense")
    assert [m for m in block.modules() if isinstance(m, nn.Conv2d)] == [block.rbr_reparam]
    assert torch.allclose(block(x), before, atol=1e-5)


def test_whole_model_reparameterised_predicts_the_same() -> None:
    torch.manual_seed(0)
    model = build_yolov6(YoloV6Options(**TINY, conf_thresh=0.0), 3)
    _randomise_bn(model)
    for conv in model.detect.cls_preds:  # non-constant scores, so the boxes kept depend on the features
        nn.init.normal_(conv.weight, std=0.3)
    model.eval()
    batch = model.prepare([torch.rand(3, 64, 80), torch.rand(3, 72, 60)], [{}, {}], "cpu")
    with torch.no_grad():
        maps = [m.clone() for m in model.features(batch.images).values()]
        head = model.detect(maps)
        preds = model.predict(batch)
        reparameterize(model)
        assert not any(isinstance(m, RepVGGBlock) and m.rbr_reparam is None for m in model.modules())
        maps2 = list(model.features(batch.images).values())
        head2 = model.detect(maps2)
        preds2 = model.predict(batch)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(maps, maps2))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(head, head2))
    assert all(torch.allclose(p["boxes"], q["boxes"], atol=1e-3) and torch.equal(p["labels"], q["labels"])
               for p, q in zip(preds, preds2))


def test_options_are_checked() -> None:
    with pytest.raises(OptionError, match="variant='m' is invalid"):
        YoloV6Options(variant="m").check()
    with pytest.raises(OptionError, match="iou_type='ciou' is invalid"):
        YoloV6Options(iou_type="ciou").check()
    with pytest.raises(OptionError, match="conf_thresh=1.5 is invalid"):
        YoloV6Options(conf_thresh=1.5).check()


def test_converter_keeps_release_names_and_drops_the_dfl_projection() -> None:
    """A 0.2.0 ``yolov6s.pt`` state dict: names as the release's modules give them (checked by hand below)."""
    torch.manual_seed(0)
    options = YoloV6Options(variant="s", width=0.5)
    release = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone()
               for k, v in build_yolov6(options, 80).state_dict().items()}
    release["detect.proj"] = torch.linspace(0, 0, 1)
    release["detect.proj_conv.weight"] = torch.zeros(1, 1, 1, 1)
    expected_shapes = {
        "backbone.stem.rbr_dense.conv.weight": (32, 3, 3, 3),
        "backbone.stem.rbr_1x1.bn.running_var": (32,),
        "backbone.ERBlock_2.1.conv1.rbr_identity.weight": (64,),
        "backbone.ERBlock_3.1.block.2.rbr_dense.conv.weight": (128, 128, 3, 3),
        "backbone.ERBlock_5.2.cv2.conv.weight": (512, 1024, 1, 1),
        "neck.reduce_layer0.conv.weight": (128, 512, 1, 1),
        "neck.upsample0.upsample_transpose.weight": (128, 128, 2, 2),
        "neck.Rep_p4.conv1.rbr_dense.conv.weight": (128, 384, 3, 3),
        "neck.Rep_n4.block.2.rbr_1x1.conv.weight": (256, 256, 1, 1),
        "detect.stems.0.conv.weight": (64, 64, 1, 1),
        "detect.cls_preds.2.weight": (80, 256, 1, 1),
        "detect.reg_preds.1.bias": (4,),
    }
    assert {k: tuple(release[k].shape) for k in expected_shapes} == expected_shapes
    converted = from_yolov6(release, options)
    assert "detect.proj_conv.weight" not in converted and "detect.proj" not in converted
    model = build_yolov6(options, 80)
    model.load_state_dict(converted)
    assert torch.equal(model.neck.Rep_p3.conv1.rbr_dense.conv.weight, release["neck.Rep_p3.conv1.rbr_dense.conv.weight"])
    with pytest.raises(KeyError, match="do not fit a YOLOv6-t"):
        from_yolov6(release, YoloV6Options(variant="t", width=0.375))
    with pytest.raises(KeyError, match="deploy"):
        from_yolov6({"backbone.stem.rbr_reparam.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------- assigners and losses


def _grid_4x4() -> tuple[torch.Tensor, torch.Tensor]:
    """One level, stride 8, 4x4 cells (a 32x32 input): points (4 + 8j, 4 + 8i), ATSS boxes 40x40 around them."""
    ys, xs = torch.meshgrid(torch.arange(4.0) * 8 + 4, torch.arange(4.0) * 8 + 4, indexing="ij")
    points = torch.stack([xs, ys], -1).reshape(-1, 2)
    return points, torch.cat([points - 20, points + 20], 1)


def test_atss_keeps_the_candidates_above_mean_plus_std() -> None:
    """Ground truth [0, 0, 40, 40] (centre (20, 20), anchor 10 = cell (2, 2)). Its 9 nearest anchors are the 3x3
    around cell (2, 2): IoUs 1 (centre), 2/3 (4 edge neighbours: 32x40 overlap, union 1920), 8/17 (4 corners:
    32x32, union 2176). mean = 0.6166, unbiased std = 0.1740, threshold 0.7906: only anchor 10 is positive.
    Its target score is the IoU of its predicted box [0, 0, 40, 20] with the ground truth: 0.5."""
    points, boxes = _grid_4x4()
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 0.0, 0.0]]])  # the second slot is padding
    valid = torch.tensor([[True, False]])
    labels = torch.tensor([[2, 0]])
    pred = torch.zeros(1, 16, 4)
    pred[0, 10] = torch.tensor([0.0, 0.0, 40.0, 20.0])
    a = atss_assign(boxes, [16], labels, gt, valid, pred, num_classes=3, topk=9)
    assert a.fg[0].nonzero().flatten().tolist() == [10]
    assert a.labels[0, 10].item() == 2 and a.boxes[0, 10].tolist() == [0.0, 0.0, 40.0, 40.0]
    expected = torch.zeros(16, 3)
    expected[10, 2] = 0.5
    assert torch.allclose(a.scores[0], expected, atol=1e-6)


def test_tal_takes_the_top_aligned_anchors_and_normalises_their_scores() -> None:
    """Ground truth [0, 0, 32, 32] holds all 16 points; every predicted box is the ground truth (IoU 1), so
    t = s^1 · 1^6 = s. With scores s_a = (a + 1)/16 for class 1, the 13 best are anchors 3..15, and each target is
    t_a · max IoU / max t = s_a / 1.0. A second ground truth [0, 0, 8, 8] holds only point 0 (s = 1/16; IoU with
    the boxes 1/16): it gets anchor 0, whose target is t·u_max/(t_max + eps) with t = (1/16)·(1/16)^6 = 16^-7:
    (1/16)·t/(t + 1e-9) = 0.0493, not 1/16, since t is tiny next to the release's eps."""
    points, _ = _grid_4x4()
    scores = torch.zeros(1, 16, 2)
    scores[0, :, 1] = (torch.arange(16.0) + 1) / 16
    pred = torch.tensor([0.0, 0.0, 32.0, 32.0]).repeat(1, 16, 1)
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 8.0, 8.0]]])
    labels = torch.tensor([[1, 1]])
    a = tal_assign(scores, pred, points, labels, gt, torch.tensor([[True, False]]), num_classes=2, topk=13)
    assert a.fg[0].nonzero().flatten().tolist() == list(range(3, 16))
    assert torch.allclose(a.scores[0, 3:, 1], (torch.arange(3, 16.0) + 1) / 16, atol=1e-6)
    assert a.scores[0, :3].abs().sum() == 0 and a.scores[0, :, 0].abs().sum() == 0
    b = tal_assign(scores, pred, points, labels, gt, torch.tensor([[True, True]]), num_classes=2, topk=13)
    assert b.fg[0].nonzero().flatten().tolist() == [0, *range(3, 16)]
    assert b.boxes[0, 0].tolist() == [0.0, 0.0, 8.0, 8.0]
    t = 16.0 ** -7
    assert b.scores[0, 0, 1].item() == pytest.approx(t * (1 / 16) / (t + 1e-9), rel=1e-4)  # the release's eps 1e-9 counts here


def test_an_anchor_claimed_twice_goes_to_the_ground_truth_it_overlaps_most() -> None:
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]])
    overlaps = torch.tensor([[[0.3, 0.9, 0.1], [0.6, 0.2, 0.8]]])
    index, fg, one_hot = resolve_conflicts(mask, overlaps)
    assert index.tolist() == [[1, 0, 1]] and fg.tolist() == [[True, True, True]]
    assert one_hot.tolist() == [[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]]


def test_varifocal_loss_on_hand_values() -> None:
    """p = sigmoid(0) = 0.5. Positive, q = 0.8: weight q = 0.8, BCE(0.5, 0.8) = ln 2. Negative, q = 0: weight
    α·p^γ = 0.75·0.25, BCE(0.5, 0) = ln 2. Sum: (0.8 + 0.1875)·ln 2."""
    logits = torch.zeros(2, 1)
    target = torch.tensor([[0.8], [0.0]])
    one_hot = torch.tensor([[1.0], [0.0]])
    assert varifocal_loss(logits, target, one_hot).item() == pytest.approx(0.9875 * math.log(2), abs=1e-6)


def test_giou_and_siou_losses_on_hand_values() -> None:
    # GIoU: [0,0,2,2] vs [1,1,3,3]: IoU 1/7, enclosing 9, GIoU = 1/7 - 2/9
    assert giou_loss(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])).item() == pytest.approx(1 - (1 / 7 - 2 / 9), abs=1e-6)
    pred = torch.tensor([[0.0, 0, 2, 2]] * 3)
    target = torch.tensor([[2.0, 0, 4, 2],   # offset (2, 0): angle cost 0, Δ = 1 - e^(-2·(2/4)²), IoU 0
                           [1.0, 2, 3, 4],   # offset (1, 2): sin α = 1/√5, Λ = sin 2α = 0.8, Δ = 2 - e^(-1.2/9) - e^(-1.2/4)
                           [0.0, 0, 4, 2]])  # offset (1, 0), width 2 vs 4: IoU 1/2, Δ = 1 - e^(-2/16), Ω = (1 - e^(-1/2))⁴
    expected = [1 + 0.5 * (1 - math.exp(-0.5)),
                1 + 0.5 * (2 - math.exp(-1.2 / 9) - math.exp(-0.3)),
                1 - (0.5 - 0.5 * ((1 - math.exp(-0.125)) + (1 - math.exp(-0.5)) ** 4))]
    assert siou_loss(pred, target).tolist() == pytest.approx(expected, abs=1e-5)
    assert siou_loss(target, target).abs().max().item() < 1e-5


def test_the_assigner_switches_from_atss_to_tal_with_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    import dfd.models.yolov6_loss as yolo_loss

    used = []
    for name in ("atss_assign", "tal_assign"):
        original = getattr(yolo_loss, name)
        monkeypatch.setattr(yolo_loss, name, lambda *a, _f=original, _n=name, **k: used.append(_n) or _f(*a, **k))
    torch.manual_seed(0)
    model = build_yolov6(YoloV6Options(**TINY, atss_epochs=2), 3).train()
    batch = model.prepare([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
                                                    "labels": torch.tensor([2])}], "cpu")
    for epoch in (0, 1, 2, 3):
        model.set_epoch(epoch, 10)
        losses = model.train_step(batch).losses
        assert all(torch.isfinite(v) for v in losses.values())
    assert used == ["atss_assign", "atss_assign", "tal_assign", "tal_assign"]


# ----------------------------------------------------------------------------- data


COLOURS = {1: (230, 30, 30), 2: (30, 230, 30), 3: (30, 30, 230)}
SIZES = [(96, 128), (120, 90), (100, 130), (128, 128)]  # (h, w)


def _coloured_coco(root: Path) -> Path:
    """A COCO-layout set (real PNG files and JSON): on gray noise, one box per image filled with its category's colour."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i, (h, w) in enumerate(SIZES):
            cat = i % 3 + 1
            pixels = rng.integers(100, 130, (h, w, 3)).astype(np.uint8)
            x, y, bw, bh = w // 4 + i, h // 5, w // 2, h // 2
            pixels[y:y + bh, x:x + bw] = COLOURS[cat]
            name = f"{i:06d}.png"
            Image.fromarray(pixels).save(root / f"{split}2017" / name)
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh], "area": bw * bh,
                         "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        categories = [{"id": c, "name": f"c{c}"} for c in COLOURS]
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


def _datasets(root: Path, **yolo) -> tuple[YoloDataset, YoloDataset]:
    options = {"img_size": 160, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "fliplr": 0.0, **yolo}
    return build_datasets("coco", _coloured_coco(root), needs=DataNeeds(pipeline="yolo"), yolo=options)


def _colour_inside(image: torch.Tensor, box: torch.Tensor) -> np.ndarray:
    """The mean colour (0..255) of the inner half of ``box`` in ``image`` [3, h, w]."""
    x1, y1, x2, y2 = box.tolist()
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 4, (y2 - y1) / 4
    crop = image[:, int(cy - hh):int(math.ceil(cy + hh)), int(cx - hw):int(math.ceil(cx + hw))]
    return (crop.mean((1, 2)) * 255).numpy()


def test_letterbox_centres_the_image_and_moves_its_boxes(tmp_path: Path) -> None:
    image = Image.new("RGB", (100, 50), (10, 20, 30))
    out, boxes = letterbox(image, np.array([[0.0, 0.0, 100.0, 50.0]], np.float32), 160)
    assert out.size == (160, 160)
    assert boxes.tolist() == [[0.0, 40.0, 160.0, 120.0]]  # scaled 1.6, 40 px of gray above and below
    pixels = np.asarray(out)
    assert (pixels[39, 80] == 114).all() and (pixels[40, 80] == (10, 20, 30)).all() and (pixels[120, 80] == 114).all()
    train, _ = _datasets(tmp_path, mosaic=0.0, translate=0.0, scale=0.0)
    for index in range(len(train)):
        img, target = train[index, 7]
        assert img.shape == (3, 160, 160) and target["size"].tolist() == [160, 160]
        (box,), (label,) = target["boxes"], target["labels"]
        assert np.abs(_colour_inside(img, box) - COLOURS[int(label)]).max() < 3


def test_mosaic_keeps_every_box_on_its_object_and_is_a_function_of_the_seed(tmp_path: Path) -> None:
    train, _ = _datasets(tmp_path, mosaic=1.0, translate=0.1, scale=0.3, min_box_side=8.0)
    seen = 0
    for seed in range(6):
        img, target = train[0, seed]
        assert img.shape == (3, 160, 160)
        for box, label in zip(target["boxes"], target["labels"]):
            assert np.abs(_colour_inside(img, box) - COLOURS[int(label)]).max() < 12, (seed, box, label)
            seen += 1
    assert seen > 6  # several images per mosaic
    a, b, c = train[1, 3], train[1, 3], train[1, 4]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and not torch.equal(a[0], c[0])


def test_mosaic_stops_for_the_last_epochs(tmp_path: Path) -> None:
    train, _ = _datasets(tmp_path, mosaic=1.0, translate=0.0, scale=0.0, stop_aug_last_n_epoch=2)
    train.set_epoch(7, 10)
    assert train.mosaic_on
    train.set_epoch(8, 10)
    assert not train.mosaic_on
    for index in range(len(train)):  # the letterboxed image alone: one box
        assert len(train[index, 1][1]["boxes"]) == 1
    train.set_epoch(9, 10)
    assert not train.mosaic_on


def test_mixup_blends_two_mosaics_and_keeps_both_box_sets(tmp_path: Path) -> None:
    plain, _ = _datasets(tmp_path / "a", mosaic=1.0, mixup=0.0, translate=0.0, scale=0.0)
    mixed, _ = _datasets(tmp_path / "b", mosaic=1.0, mixup=1.0, translate=0.0, scale=0.0)
    counts = [(len(plain[0, s][1]["boxes"]), len(mixed[0, s][1]["boxes"])) for s in range(4)]
    assert sum(m for _, m in counts) > sum(p for p, _ in counts)  # a second mosaic's boxes are added
    image, target = mixed[0, 0]
    assert image.shape == (3, 160, 160) and (target["boxes"][:, 2:] <= 160).all()


def test_the_training_loop_announces_the_epoch_it_is_in() -> None:
    """``announce_epoch`` gives the train set and the student (epoch, epochs), epoch from the iteration (resume-exact)."""
    from types import SimpleNamespace

    from dfd.engine.train import announce_epoch

    seen = []

    class Recorder:
        def set_epoch(self, epoch, epochs):
            seen.append((epoch, epochs))

    run = SimpleNamespace(total=25, iters_per_epoch=10, train_set=Recorder(), distiller=SimpleNamespace(student=Recorder()))
    announce_epoch(run, 2)
    assert seen == [(2, 3), (2, 3)]  # 25 iterations of 10 per epoch: 3 epochs
    run.train_set = object()  # one without the hook is left alone
    announce_epoch(run, 0)
    assert seen[-1] == (0, 3) and len(seen) == 3


def test_bad_yolo_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.yolo.img_size=100 is invalid"):
        yolo_options({"img_size": 100})
    with pytest.raises(DataError, match="data.yolo: unknown key.*mosiac"):
        yolo_options({"mosiac": 1.0})
    assert yolo_options(None) == YoloDataOptions()


class Oracle(TaskModel, nn.Module):
    """Predicts each validation image's ground truth (in the coordinates of the input it saw), score 1."""

    input_spec = YoloV6Model.input_spec

    def predict(self, batch):
        return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in batch.targets]


def test_validation_maps_perfect_predictions_back_to_ap_100(tmp_path: Path) -> None:
    _, val = _datasets(tmp_path)
    image, target = val[2]  # 100x130 -> long side 160: 123x160, boxes scaled per axis
    assert tuple(image.shape) == (3, 123, 160) and target["size"].tolist() == [123, 160]
    assert target["orig_size"].tolist() == [100, 130]
    metrics = evaluate_on_cpu(Oracle(), val, "detection", batch_size=2)
    assert metrics["bbox/AP"] == pytest.approx(100.0)


def test_a_tiny_yolov6_overfits_a_few_images(tmp_path: Path) -> None:
    """Four images without augmentation: the loss falls and the AP on them rises (measured, 80 steps: loss sums
    14.8 -> 5.0 with one thread and -> 7.6 with two, AP 0 -> 91 and 75: the criteria keep a margin for both)."""
    _, val = _datasets(tmp_path)
    torch.manual_seed(0)
    model = build_yolov6(YoloV6Options(**TINY, atss_epochs=1, bn_momentum=0.1), val.num_classes)
    images, targets = collate([val[i] for i in range(len(val))])
    batch = model.prepare(images, targets, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def ap() -> float:
        return evaluate_on_cpu(model, val, "detection")["bbox/AP"]

    before = ap()
    losses = train_steps(model, batch, opt, 80, before_step=lambda i: model.set_epoch(0 if i < 25 else 1))
    after = ap()
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    assert after > before + 40.0, (before, after)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_teacher_then_dfd_student_through_the_script(tmp_path: Path) -> None:
    """scripts/train.py at smoke scale on tiny synthetic data: a YOLOv6-S teacher, then a YOLOv6-T student distilled
    by DFD on p3-p5 (teacher 24/48/96 channels, student 16/32/64)."""
    common = ["scale=smoke", "data=synthetic_yolo", "teacher=yolov6_s", "student=yolov6_t", "data.synthetic.num_train=8",
              "data.synthetic.num_val=4", "data.batch_size=2", "trainer.max_iters=3", "trainer.progress=false",
              "trainer.threads=1", "schedule.warmup_iters=1"]
    env = {"DFD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def train(name: str, *overrides: str) -> dict:
        run_dir = tmp_path / name
        subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *common, *overrides,
                        f"hydra.run.dir={run_dir}"], check=True, cwd=REPO, env=env, timeout=300)
        return json.loads((run_dir / "metrics.json").read_text())

    teacher = train("teacher", "train=teacher", "schedule=epochs_400", "distill=none")
    assert "bbox/AP" in teacher["metrics"]
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    student = train("dfd", "distill=dfd", "schedule=epochs_300", f"teacher.checkpoint={ckpt}")
    assert "bbox/AP" in student["metrics"]
    assert {"loss/cls", "loss/iou"} <= set(student["losses"])
    assert {"distill/dfd/hd", "distill/dfd/ld"} <= set(student["losses"]), student["losses"]
