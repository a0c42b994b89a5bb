"""The run-directory contract: layout, digest, atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dfd.rundir import atomic_write_json, atomic_write_text, config_diff, config_digest, read_json, result_config, seed_dir, teacher_dir


def test_layout() -> None:
    assert seed_dir("runs", "smoke", 5, "tf_mse", 2) == Path("runs/smoke/table5/tf_mse/seed2")
    assert teacher_dir("runs", "full", "retinanet_x101_64x4d-0123abcd") == Path("runs/full/teachers/retinanet_x101_64x4d-0123abcd")


def test_digest_ignores_only_what_does_not_change_results() -> None:
    cfg = {"seed": 0, "trainer": {"progress": True, "max_iters": 3}, "logger": {"kind": "wandb"}, "data": {"num_workers": 4}}
    assert "trainer.progress" not in result_config(cfg) and "trainer.max_iters" in result_config(cfg)
    quieter = {**cfg, "trainer": {"progress": False, "max_iters": 3}, "logger": {"kind": "none"}, "data": {"num_workers": 0}}
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
