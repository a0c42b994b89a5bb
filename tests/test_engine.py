"""The training loop end to end on tiny real data, its pieces, resumption and failures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose_config
from pycocotools.coco import COCO

from dfd.data import DataError
from dfd.data.sampler import EpochBatchSampler
from dfd.engine import train as train_mod
from dfd.engine.checkpoint import atomic_save
from dfd.engine.config import ConfigError
from dfd.engine.evaluate import coco_bbox_metrics, to_coco_results
from dfd.engine.schedule import iteration_plan, lr_factor
from dfd.engine.train import run_training
from dfd.models import WeightsError

BBOX = ["bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl"]


def test_lr_schedule_by_hand() -> None:
    kw = dict(warmup_iters=10, warmup_ratio=0.001, milestones=[20, 30], gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10, **kw) == 1.0
    assert lr_factor(20, **kw) == pytest.approx(0.1)
    assert lr_factor(35, **kw) == pytest.approx(0.01)
    assert iteration_plan(12, [8, 11], 100, None) == (1200, [800, 1100])
    assert iteration_plan(12, [8, 11], 100, 50) == (50, [800, 1100])


def test_sampler_resumes_mid_epoch_and_shards() -> None:
    full = list(EpochBatchSampler(20, 3, seed=1, epoch=2))
    assert len(full) == 6 and len({i for b in full for i in b}) == 18
    assert list(EpochBatchSampler(20, 3, seed=1, epoch=2, start=4)) == full[4:]
    assert full != list(EpochBatchSampler(20, 3, seed=1, epoch=3))
    a = {i for b in EpochBatchSampler(20, 2, seed=0, epoch=0, rank=0, world_size=2) for i in b}
    b = {i for b in EpochBatchSampler(20, 2, seed=0, epoch=0, rank=1, world_size=2) for i in b}
    assert not a & b and len(a) == len(b) == 10


def test_atomic_save_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "ck.pth"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def _tiny_coco(tmp_path: Path) -> COCO:
    gt = {
        "images": [{"id": 7, "width": 200, "height": 100, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 40, 30], "area": 1200, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "square"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return COCO(str(path))


def test_results_map_back_to_original_pixels_and_score(tmp_path: Path) -> None:
    # the model saw the image at half size (50 x 100); the box is the ground truth there
    out = [{"boxes": torch.tensor([[5.0, 10.0, 25.0, 25.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    tgt = [{"size": torch.tensor([50, 100]), "orig_size": torch.tensor([100, 200]), "image_id": torch.tensor(7)}]
    res = to_coco_results(out, tgt, {1: 3})
    assert res == [{"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 30.0], "score": 0.9}]
    metrics, _ = coco_bbox_metrics(_tiny_coco(tmp_path), res, [7])
    assert metrics["bbox/AP"] == pytest.approx(100.0) and metrics["bbox/APm"] == pytest.approx(100.0)
    assert metrics["bbox/APs"] is None  # no small ground truth: undefined, not 0
    assert coco_bbox_metrics(_tiny_coco(tmp_path), [], [7])[0]["bbox/AP"] == 0.0


@pytest.mark.slow
def test_teacher_then_dfd_student_through_the_entry_point(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    """The real scripts/train.py: a DFD student from a teacher checkpoint writes metrics.json and a checkpoint."""
    run_dir = tmp_path / "student"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *TINY, "distill=dfd", f"teacher.checkpoint={teacher_checkpoint}",
           f"hydra.run.dir={run_dir}"]
    env = {**__import__("os").environ, "DFD_CACHE": str(data_cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "finished" and set(BBOX) <= set(record["metrics"])
    assert all(v is None or 0.0 <= v <= 100.0 for v in record["metrics"].values())
    assert {"distill/dfd/hd", "distill/dfd/ld", "loss/classification"} <= set(record["losses"])
    assert record["experiment"]["methods"] == ["dfd"] and record["timings"]["iterations"] == 3
    assert record["code_version"]["version"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["finished"] and ckpt["iteration"] == 3 and ckpt["distill"]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "history.jsonl").is_file()
    teacher_record = json.loads((teacher_checkpoint.parents[1] / "metrics.json").read_text())
    assert teacher_record["experiment"]["role"] == "teacher" and set(BBOX) <= set(teacher_record["metrics"])


@pytest.mark.slow
def test_finished_run_is_not_redone_and_other_config_refused(tmp_path: Path, data_cache: Path) -> None:
    cfg = compose_config([*TINY, "distill=none"])
    first = run_training(cfg, tmp_path)
    mtime = (tmp_path / "metrics.json").stat().st_mtime_ns
    assert run_training(cfg, tmp_path)["finished_at"] == first["finished_at"]
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="holds a finished run with another config"):
        run_training(compose_config([*TINY, "distill=none", "seed=1"]), tmp_path)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*TINY, "distill=none", "trainer.max_iters=4", "trainer.checkpoint_interval=2", "trainer.evaluate=false"]
    straight = tmp_path / "straight"
    run_training(compose_config(overrides), straight)

    resumed = tmp_path / "resumed"
    real = train_mod.lr_factor

    def crash_at_3(iteration: int, **kw):
        if iteration == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(iteration, **kw)

    monkeypatch.setattr(train_mod, "lr_factor", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run_training(compose_config(overrides), resumed)
    assert torch.load(resumed / "checkpoints" / "last.pth", weights_only=True)["iteration"] == 2
    assert not (resumed / "metrics.json").exists()
    monkeypatch.setattr(train_mod, "lr_factor", real)
    record = run_training(compose_config(overrides), resumed)
    assert record["timings"]["iterations_this_process"] == 2
    a = torch.load(straight / "checkpoints" / "last.pth", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bad_teacher_checkpoints_fail_before_training(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(teacher_checkpoint.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="teacher.checkpoint: '.*corrupt.pth' is not a readable PyTorch checkpoint"):
        run_training(compose_config([*TINY, "distill=dfd", f"teacher.checkpoint={corrupt}"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="was written for another model: teacher.backbone: checkpoint 'resnet34', config 'resnet50'"):
        run_training(compose_config([*TINY, "distill=dfd", "teacher.backbone=resnet50", f"teacher.checkpoint={teacher_checkpoint}"]), tmp_path / "b")
    unfinished = tmp_path / "unfinished.pth"
    ckpt = torch.load(teacher_checkpoint, weights_only=True)
    torch.save({**ckpt, "finished": False}, unfinished)
    with pytest.raises(ConfigError, match="is from an unfinished run"):
        run_training(compose_config([*TINY, "distill=dfd", f"teacher.checkpoint={unfinished}"]), tmp_path / "c")


def test_truncated_annotation_file_fails_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        (root / "annotations" / f"instances_{split}2017.json").write_text('{"images": [{"id": 1, "file_na')
    with pytest.raises(DataError, match="instances_train2017.json"):
        run_training(compose_config([*TINY, "distill=none", "data=coco", f"data.root={root}"]), tmp_path / "run")


@pytest.mark.slow
def test_wandb_offline_logging(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """logger=wandb needs no account: offline by default, the config, losses, each distillation term and the metrics logged."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config([*TINY, "distill=dfd", f"teacher.checkpoint={teacher_checkpoint}", "logger=wandb",
                          "experiment.table=5", "experiment.row=tf_mse", "trainer.log_interval=1"])
    run_training(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert {"loss/classification", "distill/dfd/hd", "distill/dfd/ld", "lr"} <= set(history[0])
    assert "bbox/AP" in history[-1]
    assert (tmp_path / "wandb_id.txt").read_text().strip() in runs[0].name


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    """torchrun with 2 CPU processes (gloo): DFD student trains with DDP, rank 0 writes the run files."""
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(REPO / "scripts" / "train.py"), *TINY, "distill=dfd", f"teacher.checkpoint={teacher_checkpoint}",
           "trainer.threads=1", f"hydra.run.dir={run_dir}"]
    env = {**__import__("os").environ, "DFD_CACHE": str(data_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "finished" and record["timings"]["iterations"] == 3
    assert {"distill/dfd/hd", "distill/dfd/ld"} <= set(record["losses"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fgd", "cwd", "mse", "pkd+dfd"])
def test_each_method_trains_in_the_loop(method: str, tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    cfg = compose_config([*TINY, f"distill={method}", f"teacher.checkpoint={teacher_checkpoint}", "distill.inherit=true",
                          "trainer.evaluate=false"])
    record = run_training(cfg, tmp_path)
    for m in method.split("+"):
        assert any(k.startswith(f"distill/{m}/") for k in record["losses"]), record["losses"]
