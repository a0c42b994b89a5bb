"""The run-directory contract: layout, digest, atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import compose_config

from dfd.engine.config import load_config, to_plain
from dfd.rundir import (
    LATE_PINNED_FAMILIES,
    RENAMED_KEYS,
    atomic_write_json,
    atomic_write_text,
    config_diff,
    config_digest,
    flatten,
    read_json,
    result_config,
    seed_dir,
    teacher_dir,
)


def test_layout() -> None:
    assert seed_dir("runs", "smoke", 5, "tf_mse", 2) == Path("runs/smoke/table5/tf_mse/seed2")
    assert teacher_dir("runs", "full", "retinanet_x101_64x4d-0123abcd") == Path("runs/full/teachers/retinanet_x101_64x4d-0123abcd")


def test_digest_ignores_only_what_does_not_change_results() -> None:
    cfg = {"seed": 0, "trainer": {"progress": True, "max_iters": 3, "cpu_malloc": "reuse"}, "logger": {"kind": "wandb"},
           "data": {"num_workers": 4}}
    assert "trainer.progress" not in result_config(cfg) and "trainer.max_iters" in result_config(cfg)
    quieter = {**cfg, "trainer": {"progress": False, "max_iters": 3, "cpu_malloc": "default"}, "logger": {"kind": "none"},
               "data": {"num_workers": 0}}
    assert config_digest(quieter) == config_digest(cfg)
    assert config_digest({**cfg, "seed": 1}) != config_digest(cfg)
    assert config_diff(cfg, {**cfg, "seed": 1}) == ["seed: 0 -> 1"]


def test_new_files_are_readable_by_others_and_replacing_keeps_the_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_json({"a": 1}, tmp_path / "sub" / "m.json")
        assert path.stat().st_mode & 0o777 == 0o644 and read_json(path) == {"a": 1}
        os.chmod(path, 0o640)
        atomic_write_text(path, "{}")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    from dfd.rundir import atomic_write

    path = atomic_write_text(tmp_path / "f.txt", "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_unused_pipeline_options_leave_the_digest_alone() -> None:
    """A run that sets no options of a pipeline (data.yolo: null) has the digest it had before that pipeline existed."""
    from dfd.rundir import PIPELINE_KEYS

    before = {"data": {"kind": "synthetic", "min_size": 128}, "seed": 0}
    after = {"data": {**before["data"], **{key.split(".")[1]: None for key in PIPELINE_KEYS}}, "seed": 0}
    assert config_digest(after) == config_digest(before)
    used = {"data": {**after["data"], "yolo": {"img_size": 160}}, "seed": 0}
    assert config_digest(used) != config_digest(before)


def _composed(*overrides: str) -> dict:
    return to_plain(load_config(compose_config(["scale=smoke", *overrides]), require_teacher=False))


def test_a_renamed_key_keeps_the_digest() -> None:
    """public.box_ap became public.metric: a config has the digest it had under the old name (RENAMED_KEYS)."""
    old = {"seed": 0, "teacher.family": "retinanet", "teacher.public.url": "https://x/r-366f5af1.pth",
           "teacher.public.sha256": "366f5af1", "teacher.public.box_ap": 41.0, "student.family": "retinanet",
           "student.public.url": None, "student.public.sha256": None, "student.public.box_ap": None}
    new = {"seed": 0, "teacher": {"family": "retinanet", "public": {"url": "https://x/r-366f5af1.pth", "sha256": "366f5af1",
                                                                     "metric": 41.0}},
           "student": {"family": "retinanet", "public": {"url": None, "sha256": None, "metric": None}}}
    assert config_digest(new) == config_digest(old) == "962e1b4049ad10df"  # the old name's digest before the rename
    new = _composed("distill=dfd")  # the RetinaNet X101-64x4d teacher, pinned with its box AP
    flat = flatten(new)
    assert flat["teacher.public.metric"] == 41.0 and "teacher.public.box_ap" not in flat
    old = dict(flat)
    old["teacher.public.box_ap"], old["student.public.box_ap"] = old.pop("teacher.public.metric"), old.pop("student.public.metric")
    assert config_digest(old) == config_digest(new) == config_digest(flat)
    assert set(RENAMED_KEYS.values()) == {"teacher.public.box_ap", "student.public.box_ap"}
    # the pin is still part of the identity, and a difference in it is named by its new name
    other = {**flat, "teacher.public.metric": 40.0}
    assert config_digest(other) != config_digest(new)
    assert config_diff(new, other) == ["teacher.public.metric: 41.0 -> 40.0"]


def test_late_pins_leave_the_digest_alone() -> None:
    """The pose, segmentation and YOLOv6 teachers were pinned after their runs were recorded with null pins: the
    digest sees their public.* as null (LATE_PINNED_FAMILIES); a detection teacher's pin stays in it."""
    for overrides in (["teacher=pspnet_r101", "student=pspnet_r18", "data=synthetic_cityscapes"],
                      ["teacher=simplebaseline_r50", "student=simplebaseline_mobilenetv2", "data=synthetic_keypoints"],
                      ["teacher=yolov6_s", "student=yolov6_t", "data=synthetic_yolo"]):
        flat = flatten(_composed("distill=dfd", *overrides))
        assert flat["teacher.family"] in LATE_PINNED_FAMILIES and flat["teacher.public.url"]
        unpinned = {**flat, "teacher.public.url": None, "teacher.public.sha256": None, "teacher.public.box_ap": None}
        del unpinned["teacher.public.metric"]
        assert config_digest(unpinned) == config_digest(flat)
    flat = flatten(_composed("distill=dfd"))
    assert config_digest({**flat, "teacher.public.url": None}) != config_digest(flat)
