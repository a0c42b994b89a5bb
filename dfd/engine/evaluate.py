"""The evaluation loop: a model over its share of the validation set, scored by its task's evaluators."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dfd.data import collate
from dfd.models import WeightsError, build_model, fit_state_dict, get_family, read_checkpoint, without_pretrained
from dfd.rundir import METRICS_FILE, atomic_write_json

from .checkpoint import check_labels, evaluated_state
from .config import Config, ConfigError, TrainerConfig, config_from_plain, load_config
from .dist import DistInfo
from .evaluators import build_evaluators, finish, shard_indices
from .runinfo import code_version, experiment_info, now
from .setup import amp_dtype, datasets, memory_format, setup_process

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, task: str, *, batch_size: int, num_workers: int, device: torch.device,
                   amp_dtype: torch.dtype | None, info: DistInfo, progress: bool = False) -> dict[str, float | None]:
    """Metrics of ``model`` (a TaskModel) on ``dataset`` by the evaluators of ``task``.

    Under torchrun every rank predicts its share of the images (:func:`shard_indices`) and the
    evaluators' results are merged; every rank returns the same metrics.
    """
    from tqdm import tqdm

    evaluators = build_evaluators(task, dataset)
    shard = Subset(dataset, shard_indices(len(dataset), info.rank, info.world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        for images, targets in tqdm(loader, desc="eval", disable=not (progress and info.is_main), leave=False):
            batch = model.prepare(images, targets, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model.predict(batch)
            outputs = [{k: v.detach().cpu() for k, v in out.items()} for out in outputs]
            for evaluator in evaluators:
                evaluator.update(outputs, batch.meta)
    finally:
        model.train(was_training)
    return finish(evaluators, info)


def _eval_config(ckpt: Mapping[str, Any], trainer: TrainerConfig, data: Mapping[str, Any], key: str) -> Config:
    if not isinstance(ckpt.get("config"), Mapping):
        raise WeightsError(f"{key}: the checkpoint holds no run config; it was not written by a training run of this repository")
    cfg = config_from_plain(dict(ckpt["config"]))
    cfg.trainer = trainer
    for name, value in data.items():
        if value is not None:
            setattr(cfg.data, name, value)
    return cfg


def evaluate_checkpoint(path: str | os.PathLike, run_dir: str | os.PathLike, *, trainer: TrainerConfig,
                        data: Mapping[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate the model of a checkpoint a run wrote (teacher or student) on its validation set.

    The model, data and evaluation settings are the run's (from the checkpoint); ``trainer`` (device,
    amp) and ``data`` (``kind``, ``root``, ``eval_batch_size``, ``num_workers``: None keeps the run's) may
    change. The data's classes must be the checkpoint's.
    Writes ``metrics.json`` in ``run_dir``; an existing one is replaced only with ``overwrite``.
    """
    key = f"checkpoint={str(path)!r}"
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file() and not overwrite:
        raise ConfigError(f"{run_dir / METRICS_FILE} exists; evaluate into another directory (hydra.run.dir=...) or set overwrite=true")
    ckpt = read_checkpoint(path, "checkpoint")
    cfg = load_config(_eval_config(ckpt, trainer, data or {}, key), require_teacher=False)
    family = get_family(ckpt.get("family") or cfg.model.family, "checkpoint")
    t0 = time.perf_counter()
    info, device = setup_process(cfg)
    _, val_set = datasets(cfg, family)
    check_labels(ckpt, val_set, key)
    model = build_model(without_pretrained(cfg.model), ckpt.get("num_classes") or val_set.num_classes, cfg.role)
    fit_state_dict(model, evaluated_state(ckpt, "checkpoint", repr(str(path))), "checkpoint", repr(str(path)))
    metrics = evaluate_model(model.to(device, memory_format=memory_format(cfg)), val_set, family.task, batch_size=cfg.data.eval_batch_size,
                             num_workers=cfg.data.num_workers, device=device, amp_dtype=amp_dtype(trainer.amp, device, family),
                             info=info, progress=trainer.progress)
    record = {"status": "finished", "kind": "evaluation", "checkpoint": str(Path(path).resolve()), "metrics": metrics,
              "experiment": experiment_info(cfg), "config_digest": ckpt.get("config_digest"),
              "timings": {"eval_s": round(time.perf_counter() - t0, 3)}, "code_version": code_version(), "finished_at": now()}
    if info.is_main:
        atomic_write_json(record, run_dir / METRICS_FILE)
        log.info("evaluated %s: %s", path, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if v is not None))
    return record
