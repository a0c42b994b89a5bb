"""mmdetection checkpoints converted into this repository's models (the paper's teachers come from its zoo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO
from PIL import Image

from dfd.engine.checkpoint import load_teacher
from dfd.models import WeightsError
from dfd.models.mmdet import COCO_CATEGORY_IDS, COCO_CLASSES, coco_labels
from dfd.models.retinanet import RetinaNetOptions, build_retinanet, retinanet_from_mmdet

WIDTH = 16
OPTIONS = dict(backbone="resnet18", fpn_channels=WIDTH, norm="bn_eval")


def mmdet_retinanet_state(width: int = WIDTH) -> dict[str, torch.Tensor]:
    """A state dict laid out as mmdetection 2.x's RetinaNet (ResNet-18, FPN on C3-C5 with extra convs on the
    input, RetinaHead with 4 stacked convs, 9 anchors, 80 classes), with random values.

    mmdetection's ResNet names its layers as torchvision's (conv1, bn1, layerN.M.convK / bnK, downsample.0/1)
    and has no fc; its FPN has lateral_convs.{0,1,2}.conv and fpn_convs.{0..4}.conv (3: P6 on C5, 4: P7);
    RetinaHead has cls_convs / reg_convs .{0..3}.conv, retina_cls (9·80 outputs) and retina_reg (9·4).
    """
    g = torch.Generator().manual_seed(0)
    state = {f"backbone.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g)
        state[f"{name}.bias"] = torch.randn(out, generator=g)

    for i, c in enumerate((128, 256, 512)):
        conv(f"neck.lateral_convs.{i}.conv", width, c, 1)
    for i in range(3):
        conv(f"neck.fpn_convs.{i}.conv", width, width, 3)
    conv("neck.fpn_convs.3.conv", width, 512, 3)
    conv("neck.fpn_convs.4.conv", width, width, 3)
    for i in range(4):
        conv(f"bbox_head.cls_convs.{i}.conv", width, width, 3)
        conv(f"bbox_head.reg_convs.{i}.conv", width, width, 3)
    conv("bbox_head.retina_cls", 9 * 80, width, 3)
    conv("bbox_head.retina_reg", 9 * 4, width, 3)
    # each class column's bias says which (anchor, class) it is
    state["bbox_head.retina_cls.bias"] = torch.tensor([1000.0 * a + c for a in range(9) for c in range(80)])
    return state


def test_every_weight_finds_its_place_and_each_class_its_coco_id() -> None:
    state = mmdet_retinanet_state()
    options = RetinaNetOptions(**OPTIONS)
    converted = retinanet_from_mmdet(state, options)
    model = build_retinanet(options, 80)
    assert set(converted) == set(model.state_dict())  # nothing dropped, nothing missing
    model.load_state_dict(converted)  # strict
    assert {id(v) for v in converted.values()} == {id(v) for v in state.values()}
    bias = model.head.classification_head.cls_logits.bias
    labels = coco_labels(COCO_CLASSES)
    for a, c in [(0, 0), (4, 17), (8, 79)]:
        label = c + 1  # the model predicts label = column + 1 (no background column)
        assert bias[a * 80 + label - model.label_offset].item() == 1000.0 * a + c
        assert labels[label] == COCO_CATEGORY_IDS[c]
    assert labels[1] == 1 and labels[80] == 90 and len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80


def test_a_background_column_is_inserted_when_the_model_has_one() -> None:
    options = RetinaNetOptions(**OPTIONS, background_class=True)
    converted = retinanet_from_mmdet(mmdet_retinanet_state(), options)
    model = build_retinanet(options, 80)
    model.load_state_dict(converted)
    bias = model.head.classification_head.cls_logits.bias
    assert bias.shape == (9 * 81,) and bias[81 * 4 + 18].item() == 4000.0 + 17  # anchor 4, class 17 -> column 18


def test_an_unplaceable_or_missing_weight_is_named(tmp_path: Path) -> None:
    state = mmdet_retinanet_state()
    with pytest.raises(WeightsError, match=r"cannot place the mmdetection weight 'bbox_head.loss_scale'"):
        retinanet_from_mmdet({**state, "bbox_head.loss_scale": torch.ones(1)}, RetinaNetOptions(**OPTIONS))
    with pytest.raises(WeightsError, match="not mmdetection's 80 COCO classes"):
        coco_labels(COCO_CLASSES[:20])


def _coco_layout(root: Path) -> Path:
    """A two-image COCO 2017 layout whose categories are COCO's 80."""
    cats = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        images, anns = [], []
        for i in range(2):
            Image.new("RGB", (96, 64), (120, 130, 140)).save(root / f"{split}2017" / f"{i:012d}.jpg")
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 96, "height": 64})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 18, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.mark.slow
def test_converted_checkpoint_loads_as_a_teacher_and_evaluates(tmp_path: Path) -> None:
    src, out = tmp_path / "mmdet.pth", tmp_path / "converted.pth"
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": mmdet_retinanet_state()}, src)
    overrides = [f"teacher.{k}={v}" for k, v in OPTIONS.items()]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_mmdet.py"), str(src), str(out),
                           "model=retinanet_x101_64x4d", *overrides], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["finished"] and ckpt["family"] == "retinanet" and ckpt["num_classes"] == 80
    assert ckpt["label_to_category"][17] == 18 and ckpt["label_to_category"][80] == 90 and ckpt["converted_from"]["sha256"]
    teacher = load_teacher(RetinaNetOptions(**OPTIONS, checkpoint=str(out)), 80)
    assert torch.equal(teacher.head.classification_head.cls_logits.bias, ckpt["model"]["head.classification_head.cls_logits.bias"])
    root = _coco_layout(tmp_path / "coco")
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"checkpoint={out}", "data.kind=coco", f"data.root={root}",
           f"hydra.run.dir={tmp_path / 'eval'}", "trainer.progress=false", "data.num_workers=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bbox/AP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
