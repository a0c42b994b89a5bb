"""The exported student loads into torchvision's own builder and detects the same."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from dfd.engine.checkpoint import model_record
from dfd.engine.export import export_student
from dfd.models import build_model, options_from_dict
from dfd.models.faster_rcnn import FasterRCNNOptions

# torchvision's values of the options where mmdetection's Faster R-CNN (the default) predicts otherwise
TORCHVISION_RCNN = dict(exact_anchors=False, roi_aligned=False, roi_sampling_ratio=2)


def assert_same_detections(ours, theirs) -> None:
    """Our model and torchvision's detect the same boxes, scores and labels on one random 800x1067 image
    (a size torchvision's transform keeps: scale 1)."""
    image = torch.rand(3, 800, 1067)
    with torch.no_grad():
        mine = ours.predict(ours.prepare([image], [{}], "cpu"))[0]
        other = theirs([image])[0]
    assert len(mine["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.allclose(mine[key].float(), other[key].float(), atol=1e-4), key


@pytest.mark.slow
def test_a_faster_rcnn_student_round_trips_through_torchvisions_builder(tmp_path: Path) -> None:
    """With torchvision's options our Faster R-CNN predicts as torchvision's FasterRCNN with the same weights."""
    torch.manual_seed(0)
    options = FasterRCNNOptions(backbone="resnet50", backbone_weights=None, **TORCHVISION_RCNN)
    ours = build_model(options, 3, "student").eval()
    ckpt = tmp_path / "last.pth"
    torch.save({"model": ours.state_dict(), "ema": None, **model_record("faster_rcnn", options, 3, {1: 1, 2: 3, 3: 7})}, ckpt)
    export_student(ckpt, tmp_path / "student.pth")

    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4).eval()
    theirs.load_state_dict(torch.load(tmp_path / "student.pth", weights_only=True))  # strict
    assert_same_detections(ours, theirs)
    meta = json.loads((tmp_path / "student.pth.json").read_text())
    assert meta["family"] == "faster_rcnn" and meta["label_to_category"]["3"] == 7
    rebuilt = build_model(options_from_dict(meta["model_config"]), meta["num_classes"], "student")
    rebuilt.load_state_dict(torch.load(tmp_path / "student.pth", weights_only=True))


@pytest.mark.slow
def test_a_retinanet_with_torchvisions_options_round_trips_through_its_builder(tmp_path: Path) -> None:
    """mmdetection's RetinaNet (the default) has no torchvision builder; with torchvision's options it has."""
    from dfd.models.retinanet import RetinaNetOptions

    torch.manual_seed(0)
    options = RetinaNetOptions(backbone="resnet50", backbone_weights=None, p6_from="p5", p7_relu=True,
                               background_class=True, exact_anchors=False)
    ours = build_model(options, 3, "student").eval()
    torch.nn.init.zeros_(ours.head.classification_head.cls_logits.bias)  # scores 0.5: detections to compare
    ckpt = tmp_path / "last.pth"
    torch.save({"model": ours.state_dict(), "ema": None, **model_record("retinanet", options, 3, {1: 1, 2: 2, 3: 3})}, ckpt)
    export_student(ckpt, tmp_path / "student.pth")
    theirs = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4,
                                                                 detections_per_img=options.detections_per_img).eval()
    theirs.load_state_dict(torch.load(tmp_path / "student.pth", weights_only=True))
    assert_same_detections(ours, theirs)
