"""The Faster R-CNN family: its levels and mmdetection defaults, and teacher + students through the loop."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config

from dfd.engine.config import ConfigError, load_config
from dfd.engine.train import run_training
from dfd.models import get_family
from dfd.models.faster_rcnn import FasterRCNNOptions, build_faster_rcnn

SMALL = dict(backbone="resnet18", fpn_channels=16, norm="bn", trainable_layers=5, representation_size=32)
FASTER = ["student=faster_rcnn_r50", "teacher=faster_rcnn_r101"]


def test_levels_strides_and_mmdetection_defaults() -> None:
    model = build_faster_rcnn(FasterRCNNOptions(**SMALL), 3)
    feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(feats) == ["p2", "p3", "p4", "p5", "p6"]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2]  # strides 4..64, P6 by max-pooling
    family = get_family("faster_rcnn")
    assert family.default_levels == ("p2", "p3", "p4", "p5") and family.task == "detection"
    assert model.rpn._post_nms_top_n["training"] == 1000 and model.roi_heads.box_roi_pool.sampling_ratio == 0
    assert model.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 categories and the background


def test_options_are_checked_and_the_family_cannot_be_switched_by_a_value() -> None:
    with pytest.raises(ConfigError, match="student.rpn_nms_thresh=1.5 is invalid"):
        load_config(compose_config([*FASTER, "distill=none", "student.rpn_nms_thresh=1.5"]))
    with pytest.raises(ConfigError, match="student.family='faster_rcnn' is invalid: the options of student are RetinaNetOptions"):
        load_config(compose_config(["student=retinanet_r50", "student.family=faster_rcnn", "distill=none"]))
    with pytest.raises(ConfigError, match=r"distill.levels\[0\]='p7'"):
        load_config(compose_config([*FASTER, "distill=pkd", "distill.levels=[p7]", "teacher.weights=x"]), require_teacher=False)


@pytest.mark.slow
def test_teacher_then_every_method_distils_a_student(tmp_path: Path, data_cache: Path) -> None:
    """student=faster_rcnn_r50 teacher=faster_rcnn_r101 at smoke scale: a teacher, then distill=none|dfd|pkd|mgd|fgd."""
    teacher = run_training(compose_config([*TINY, *FASTER, "train=teacher"]), tmp_path / "teacher")
    assert teacher["experiment"]["teacher"] == "faster_rcnn resnet34" and "bbox/AP" in teacher["metrics"]
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    for method in ("none", "dfd", "pkd", "mgd", "fgd"):
        record = run_training(compose_config([*TINY, *FASTER, f"distill={method}", f"teacher.checkpoint={ckpt}"]), tmp_path / method)
        assert record["experiment"]["student"] == "faster_rcnn resnet18" and "bbox/AP" in record["metrics"]
        assert {"loss/loss_classifier", "loss/loss_objectness"} <= set(record["losses"])
        if method != "none":
            terms = {k for k in record["losses"] if k.startswith(f"distill/{method}/")}
            assert terms, record["losses"]
