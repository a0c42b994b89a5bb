"""Pinned teachers: fetched from their published address, hash-checked, converted, verified."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from test_convert import OPTIONS, mmdet_retinanet_state
from test_zoo_conversion import DECONV, mmpose_topdown_state, mmseg_pspnet_r18_state

from dfd.data.cityscapes import CLASSES as CITYSCAPES_CLASSES
from dfd.engine import teachers
from dfd.engine.checkpoint import load_teacher
from dfd.engine.config import CONF_DIR, ConfigError, config_from_plain, load_config
from dfd.models import WeightsError, options_from_dict
from dfd.models.mmdet import COCO_CLASSES
from dfd.models.retinanet import RetinaNetOptions
from dfd.models.yolov6 import build_yolov6, from_yolov6


def publish(tmp_path: Path, name: str, checkpoint: dict[str, Any]) -> tuple[str, str]:
    """``checkpoint`` 'published' at a file:// address under the file name ``name``, and its sha256 prefix."""
    path = tmp_path / "server" / name
    path.parent.mkdir(exist_ok=True)
    torch.save(checkpoint, path)
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DFD_CACHE", str(tmp_path / "cache"))
    return teachers.cache_dir()


@pytest.fixture()
def published(tmp_path: Path, cache: Path) -> tuple[str, str]:
    """An mmdetection-format checkpoint 'published' at a file:// address, and its sha256 prefix."""
    return publish(tmp_path, "retinanet_tiny_20260101-abcdef12.pth",
                   {"meta": {"CLASSES": COCO_CLASSES}, "state_dict": mmdet_retinanet_state()})


def test_every_pin_names_its_file_hash_and_published_metric() -> None:
    """Each conf/teacher/ pin: an address, the sha256 prefix its file name carries (null only where the name carries
    none) and the published value of the task's primary metric; the pose, segmentation and YOLOv6 ones as published."""
    pins = {}
    for path in sorted((CONF_DIR / "teacher").glob("*.yaml")):
        public = OmegaConf.load(path).get("public")
        if public is not None:
            pins[path.stem] = public
            name = public.url.rsplit("/", 1)[1]
            assert public.metric is not None, path.name
            assert public.sha256 is None or f"-{public.sha256}" in name, path.name
            assert public.sha256 is not None or name == "yolov6s.pt", path.name  # a release asset: no hash published
    assert {k: (v.sha256, v.metric) for k, v in pins.items() if k in ("simplebaseline_r50", "pspnet_r101", "yolov6_s")} == {
        "simplebaseline_r50": ("ec54d7f3", 71.8), "pspnet_r101": ("467e7cf4", 78.34), "yolov6_s": (None, 43.5)}
    assert pins["pspnet_r101"].url.endswith("/pspnet_r101-d8_512x1024_40k_cityscapes_20200604_232751-467e7cf4.pth")
    assert pins["yolov6_s"].url == "https://github.com/meituan/YOLOv6/releases/download/0.2.0/yolov6s.pt"
    assert len(pins) == 10


def test_fetch_checks_the_hash(published: tuple[str, str]) -> None:
    url, prefix = published
    got = teachers.fetch(url, prefix)
    assert got.is_file() and got.parent == teachers.cache_dir()
    assert teachers.fetch(url, prefix) == got  # cached
    got.unlink()
    with pytest.raises(WeightsError, match="sha256 does not start with '00000000'; not the published checkpoint"):
        teachers.fetch(url, "00000000")


def test_auto_fetches_converts_and_loads_the_published_teacher(published: tuple[str, str]) -> None:
    url, prefix = published
    overrides = [f"teacher.{k}={v}" for k, v in OPTIONS.items()]
    cfg = load_config(compose_config(["scale=full", "distill=dfd", "teacher.checkpoint=auto", f"teacher.public.url={url}",
                                      f"teacher.public.sha256={prefix}", "data=coco", f"data.root={Path(url[7:]).parent}",
                                      *overrides]))
    cfg = teachers.resolve_checkpoint(cfg)
    assert cfg.teacher.checkpoint.endswith(".dfd.pth") and Path(cfg.teacher.checkpoint).is_file()
    model = load_teacher(cfg.teacher, 80)
    assert model.head.classification_head.cls_logits.out_channels == 9 * 80
    with pytest.raises(ConfigError, match="teacher.checkpoint='auto' needs teacher.public.url"):
        teachers.resolve_checkpoint(load_config(compose_config(["distill=dfd", "teacher.checkpoint=auto", "teacher.public.url=null"])))


def _dense(*overrides: str) -> list[str]:
    return ["scale=smoke", "teacher.checkpoint=auto", "teacher.backbone=resnet18", *overrides]


def test_auto_fetches_converts_and_loads_the_published_pose_teacher(tmp_path: Path, cache: Path) -> None:
    """mmpose 0.x: ``<name>-<sha256 prefix>_<date>.pth``, no classes in its meta (one person class)."""
    state = mmpose_topdown_state("resnet18")
    url, prefix = publish(tmp_path, "res50_coco_256x192-ec54d7f3_20200709.pth", {"meta": {"mmpose_version": "0.29.0"},
                                                                               "state_dict": state})
    cfg = load_config(compose_config(_dense(
        "teacher=simplebaseline_r50", "student=simplebaseline_mobilenetv2", "data=synthetic_keypoints", "distill=cwd",
        "distill.levels=[heatmaps]", f"teacher.public.url={url}", f"teacher.public.sha256={prefix}",
        "teacher.backbone_weights=null", f"teacher.deconv_channels=[{DECONV},{DECONV},{DECONV}]")))
    cfg = teachers.resolve_checkpoint(cfg)
    assert Path(cfg.teacher.checkpoint) == cache / "res50_coco_256x192-ec54d7f3_20200709.dfd.pth"
    model = load_teacher(cfg.teacher, 1)
    assert torch.equal(model.final.weight, state["keypoint_head.final_layer.weight"])


def test_auto_asks_for_the_v1c_stem_before_fetching_the_published_pspnet(tmp_path: Path, cache: Path) -> None:
    """mmseg's PSPNet has ResNetV1c's deep stem: a teacher with torchvision's stem is refused before the download,
    naming the keys to set; with them the checkpoint converts and loads."""
    state = mmseg_pspnet_r18_state()
    url, prefix = publish(tmp_path, "pspnet_r18-d8_20200604_232751-467e7cf4.pth",
                          {"meta": {"CLASSES": CITYSCAPES_CLASSES}, "state_dict": state})
    seg = _dense("teacher=pspnet_r101", "student=pspnet_r18", "data=synthetic_cityscapes", "distill=cwd",
                 "distill.levels=[logits]", f"teacher.public.url={url}", f"teacher.public.sha256={prefix}",
                 "teacher.channels=16", "teacher.aux_channels=8")
    cfg = load_config(compose_config([*seg, "teacher.backbone_weights=ResNet18_Weights.IMAGENET1K_V1"]))
    with pytest.raises(ConfigError, match=r"the published pspnet checkpoint takes a model with stem=v1c, "
                                          r"backbone_weights=null; set teacher.stem=v1c teacher.backbone_weights=null$"):
        teachers.resolve_checkpoint(cfg)
    assert not cache.exists()  # nothing fetched
    cfg = teachers.resolve_checkpoint(load_config(compose_config([*seg, "teacher.stem=v1c", "teacher.backbone_weights=null"])))
    model = load_teacher(cfg.teacher, 19)
    assert torch.equal(model.backbone.stem[0].weight, state["backbone.stem.0.weight"])


def test_auto_refuses_the_pickled_yolov6_release_and_the_way_it_names_works(tmp_path: Path, cache: Path) -> None:
    """The 0.2.0 release's yolov6s.pt pickles the whole model (meituan/YOLOv6's classes): auto cannot convert it and
    says how to by hand, before fetching anything. That way, from_yolov6 of the model's state dict given as
    teacher.weights, loads (the release's fp16 weights, with its unused DFL projection)."""
    yolo = ["scale=smoke", "teacher=yolov6_s", "student=yolov6_t", "data=synthetic_yolo", "distill=pkd"]
    with pytest.raises(ConfigError, match=r"cannot convert the published yolov6 checkpoint "
                                          r"https://github.com/meituan/YOLOv6/releases/download/0.2.0/yolov6s.pt: .*"
                                          r"from_yolov6\(.*\['model'\].float\(\).state_dict\(\)\).*teacher.weights=OUT"):
        teachers.resolve_checkpoint(load_config(compose_config([*yolo, "teacher.checkpoint=auto"])))
    assert not cache.exists()
    options = load_config(compose_config(yolo), require_teacher=False).teacher
    release = {k: torch.randn(v.shape).half() if v.is_floating_point() else v
               for k, v in build_yolov6(options, 80).state_dict().items()}
    release.update({"detect.proj": torch.zeros(1).half(), "detect.proj_conv.weight": torch.zeros(1, 1, 1, 1).half()})
    out = tmp_path / "yolov6s.dfd.pth"
    torch.save(from_yolov6({k: v.float() for k, v in release.items()}), out)
    model = load_teacher(load_config(compose_config([*yolo, f"teacher.weights={out}"])).teacher, 80)
    assert torch.equal(model.detect.cls_preds[0].weight, release["detect.cls_preds.0.weight"].float())


def test_verify_refuses_a_teacher_far_below_its_published_metric() -> None:
    options = RetinaNetOptions(verify=True, verify_tolerance=1.0)
    options.public.metric = 41.0
    teachers.verify({"bbox/AP": 40.5}, options, "bbox/AP")
    with pytest.raises(ConfigError, match=r"bbox/AP=12.0 on the validation set, its published 41.0"):
        teachers.verify({"bbox/AP": 12.0}, options, "bbox/AP")
    options.public.metric = 78.34  # a segmentation teacher's mIoU
    teachers.verify({"seg/mIoU": 77.5}, options, "seg/mIoU")
    with pytest.raises(ConfigError, match=r"seg/mIoU=70.0 on the validation set, its published 78.34"):
        teachers.verify({"seg/mIoU": 70.0}, options, "seg/mIoU")
    options.public.metric = None
    with pytest.raises(ConfigError, match="needs teacher.public.metric, the keypoints/AP the teacher must reach"):
        teachers.verify({"keypoints/AP": 70.5}, options, "keypoints/AP")


def test_configs_written_before_the_rename_still_load() -> None:
    """Checkpoints and run configs written when ``public.metric`` was ``public.box_ap`` read as they did."""
    old = {"family": "retinanet", "public": {"url": "https://x/y-abcdef12.pth", "sha256": "abcdef12", "box_ap": 41.0}}
    assert options_from_dict(old, "teacher").public.metric == 41.0
    cfg = config_from_plain({"teacher": old, "student": {**old, "public": {"url": None, "sha256": None, "box_ap": None}}})
    assert (cfg.teacher.public.metric, cfg.student.public.metric) == (41.0, None)
