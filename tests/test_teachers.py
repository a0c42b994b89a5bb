"""Pinned teachers: fetched from their published address, hash-checked, converted, verified."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from test_convert import OPTIONS, mmdet_retinanet_state

from dfd.engine import teachers
from dfd.engine.checkpoint import load_teacher
from dfd.engine.config import ConfigError, load_config
from dfd.models import WeightsError
from dfd.models.mmdet import COCO_CLASSES
from dfd.models.retinanet import RetinaNetOptions


@pytest.fixture()
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """An mmdetection-format checkpoint 'published' at a file:// address, and its sha256 prefix."""
    monkeypatch.setenv("DFD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "server" / "retinanet_tiny_20260101-abcdef12.pth"
    path.parent.mkdir()
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": mmdet_retinanet_state()}, path)
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()[:8]


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


def test_verify_refuses_a_teacher_far_below_its_published_ap() -> None:
    options = RetinaNetOptions(verify=True, verify_tolerance=1.0)
    options.public.box_ap = 41.0
    teachers.verify({"bbox/AP": 40.5}, options, "bbox/AP")
    with pytest.raises(ConfigError, match=r"bbox/AP=12.0 on the validation set, its published 41.0"):
        teachers.verify({"bbox/AP": 12.0}, options, "bbox/AP")
    options.public.box_ap = None
    with pytest.raises(ConfigError, match="needs teacher.public.box_ap"):
        teachers.verify({"bbox/AP": 40.5}, options, "bbox/AP")
