"""The training loop end to end on tiny real data, its pieces, resumption and failures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose_config, crash_at, detector_options

from dfd.data import DataError
from dfd.engine import train as train_mod
from dfd.engine.checkpoint import atomic_save
from dfd.engine.config import ConfigError, load_config, to_plain
from dfd.engine.train import run_training
from dfd.models import WeightsError, get_family

BBOX = ["bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl"]


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
    # smoke's lr 1e-3 is for a batch of 4 (schedule.base_batch): one process with 2 images gets half
    gains = record["optimization"].pop("distill_gains")  # smoke starts the terms at distill.start_ratio
    assert record["optimization"] == {"lr": 5e-4, "total_batch": 2, "base_lr": 1e-3, "base_batch": 4}
    assert set(gains) == {"dfd"} and gains["dfd"] > 0
    assert record["code_version"]["version"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["finished"] and ckpt["iteration"] == 3 and ckpt["distill"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "history.jsonl").is_file() and (run_dir / "train.log").is_file()
    assert not (run_dir / ".hydra").exists() and not (run_dir / "run.lock").exists()  # the run writes its config itself
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
    crash_at(monkeypatch, compose_config(overrides), resumed, 3)
    assert torch.load(resumed / "checkpoints" / "last.pth", weights_only=True)["iteration"] == 2
    assert not (resumed / "metrics.json").exists()
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
    assert {"loss/classification", "distill/dfd/hd", "distill/dfd/ld", "lr/decay"} <= set(history[0])
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


@pytest.mark.slow
def test_evaluate_reproduces_the_metrics_a_run_wrote(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    """scripts/evaluate.py on a teacher's checkpoint gives the metrics.json that run wrote; an existing one is kept."""
    out = tmp_path / "eval"
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"checkpoint={teacher_checkpoint}", f"hydra.run.dir={out}",
           "trainer.progress=false"]
    env = {**__import__("os").environ, "DFD_CACHE": str(data_cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    written = json.loads((teacher_checkpoint.parents[1] / "metrics.json").read_text())
    assert record["metrics"] == written["metrics"] and set(BBOX) <= set(record["metrics"])
    assert record["experiment"]["role"] == "teacher" and record["kind"] == "evaluation"
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode != 0 and "exists; evaluate into another directory" in again.stderr


@pytest.mark.slow
def test_ema_weights_are_kept_evaluated_and_reproduced(tmp_path: Path, data_cache: Path) -> None:
    from dfd.engine.config import TrainerConfig
    from dfd.engine.evaluate import evaluate_checkpoint

    cfg = compose_config([*TINY, "distill=none", "schedule.ema_decay=0.5", "schedule.ema_ramp=null", "schedule.policy=cosine"])
    record = run_training(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["ema"] and int(ckpt["ema"]["n_averaged"]) == 4  # the initial copy and three updates
    raw, ema = ckpt["model"], {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert set(ema) == set(raw) and any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    again = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth", tmp_path / "eval",
                                trainer=TrainerConfig(progress=False))
    assert again["metrics"] == record["metrics"]


def test_the_objective_is_a_config_value() -> None:
    from dfd.engine.config import load_config
    from dfd.engine.train import objective

    record = {"metrics": {"bbox/AP": 12.5, "bbox/AP50": 30.0}}
    assert objective(load_config(compose_config(["distill=none"])), record) == 12.5
    assert objective(load_config(compose_config(["distill=none", "trainer.objective=bbox/AP50"])), record) == 30.0


def test_the_learning_rate_follows_the_total_batch() -> None:
    from dfd.engine.config import ScheduleConfig, effective_lr

    assert effective_lr(ScheduleConfig(), batch_size=2, world_size=8) == (0.01, 16)  # the public configs' setting
    assert effective_lr(ScheduleConfig(), batch_size=2, world_size=1) == (0.01 / 8, 2)
    assert effective_lr(ScheduleConfig(lr=0.02, base_batch=None), batch_size=2, world_size=1) == (0.02, 2)


def test_distill_ratios_are_each_term_over_the_task_loss() -> None:
    values = {"loss/classification": 1.5, "loss/bbox_regression": 0.5, "loss/total": 6.0,
              "distill/dfd/p3": 3.0, "distill/dfd/p4": 1.0, "lr/group0": 0.01}
    assert train_mod.distill_ratios(values) == {"ratio/dfd/p3": 1.5, "ratio/dfd/p4": 0.5}
    assert train_mod.distill_ratios({"loss/total": 0.0, "distill/dfd/p3": 1.0}) == {}


def test_compiled_losses_keep_their_state_dict_names(tmp_path: Path, teacher_checkpoint: Path) -> None:
    """trainer.compile_losses compiles the losses in place: checkpoints keep the names of an eager run, and the
    option is not part of the run's identity."""
    from dfd.engine.config import load_config
    from dfd.rundir import config_digest

    def distiller(flag: bool):
        cfg = load_config(compose_config([*TINY, "distill=dfd", f"teacher.checkpoint={teacher_checkpoint}",
                                          f"trainer.compile_losses={str(flag).lower()}"]))
        return cfg, train_mod.build_distiller(cfg, 4, torch.device("cpu"))

    (eager_cfg, eager), (compiled_cfg, compiled) = distiller(False), distiller(True)
    assert compiled.losses._compiled_call_impl is not None and eager.losses._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert config_digest(to_plain(compiled_cfg)) == config_digest(to_plain(eager_cfg))


def test_auto_precision_is_the_family_recipe() -> None:
    """trainer.amp=auto: on CUDA the precision the family's public recipe trains in (OpenMMLab configs set no fp16;
    YOLOv6's release trains under fp16 autocast), on the CPU fp32; bf16 only when asked for."""
    from dfd.engine.config import AMP_MODES
    from dfd.engine.setup import amp_dtype
    from dfd.models import FAMILIES, get_family

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype("auto", cuda, get_family("retinanet")) is None
    assert amp_dtype("auto", cuda, get_family("mask_rcnn_swin")) is None
    assert amp_dtype("auto", cuda, get_family("yolov6")) is torch.float16
    assert amp_dtype("auto", cpu, get_family("yolov6")) is None
    assert amp_dtype("bf16", cuda, get_family("retinanet")) is torch.bfloat16
    assert all(family.protocol_amp in AMP_MODES and family.protocol_amp != "auto" for family in FAMILIES.values())


@pytest.mark.parametrize("option", [o for o, family in detector_options("student").items() if get_family(family).channels_last])
def test_channels_last_computes_the_same_losses_and_gradients(option: str, tmp_path: Path) -> None:
    """trainer.channels_last only changes the weights' layout (and so the activations'): the same losses and gradients,
    for every family that allows it (Family.channels_last)."""
    import copy

    from dfd.data import DataNeeds, build_datasets, collate
    from dfd.models import build_model

    cfg = load_config(compose_config(["scale=smoke", f"student={option}", "distill=none"]))
    family = get_family(cfg.student.family)
    train, _ = build_datasets("synthetic", tmp_path, min_size=96, max_size=128, flip_prob=0.0, needs=DataNeeds(
        pipeline=family.pipeline, target_keys=family.target_keys), synthetic={"num_train": 2, "num_val": 1})
    torch.manual_seed(0)
    model = build_model(cfg.student, train.num_classes, "student").train()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert twin.state_dict()[next(k for k, v in twin.state_dict().items() if v.dim() == 4)].is_contiguous(
        memory_format=torch.channels_last)
    images, targets = collate([train[i] for i in range(len(train))])
    grads = []
    for m in (model, twin):
        torch.manual_seed(1)  # the same sampling of proposals and anchors in both
        losses = m.train_step(m.prepare(images, targets, "cpu")).losses
        sum(losses.values()).backward()
        grads.append((losses, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = grads
    assert la.keys() == lb.keys() and all(torch.allclose(la[k], lb[k], rtol=1e-4, atol=1e-5) for k in la), (la, lb)
    assert ga.keys() == gb.keys() and all(torch.allclose(ga[n], gb[n], rtol=1e-3, atol=1e-5) for n in ga)


def test_channels_last_is_refused_for_an_unverified_family() -> None:
    with pytest.raises(ConfigError, match="trainer.channels_last=True is invalid: not verified for the yolov6 family"):
        load_config(compose_config(["student=yolov6_t", "distill=none", "trainer.channels_last=true"]))
    load_config(compose_config(["student=retinanet_r18", "distill=none", "trainer.channels_last=true"]))


@pytest.mark.slow
def test_a_channels_last_run_trains_and_its_checkpoint_evaluates_either_way(tmp_path: Path, data_cache: Path) -> None:
    from dfd.engine.config import TrainerConfig
    from dfd.engine.evaluate import evaluate_checkpoint

    run_training(compose_config([*TINY, "distill=none", "trainer.channels_last=true"]), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pth"
    metrics = [evaluate_checkpoint(ckpt, tmp_path / f"eval_{flag}", trainer=TrainerConfig(device="cpu", channels_last=flag,
                                                                                        progress=False))["metrics"]
               for flag in (True, False)]
    assert metrics[0].keys() == metrics[1].keys()
    assert all(abs(metrics[0][k] - metrics[1][k]) <= 0.5 for k in metrics[0] if k.startswith("bbox/")), metrics
