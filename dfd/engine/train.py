"""The one training loop, for teachers and students alike."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from dfd.data import build_detection_datasets, collate
from dfd.data.sampler import EpochBatchSampler
from dfd.distill import FeatureDistillation
from dfd.models import (
    FEATURE_MODULES,
    WeightsError,
    build_detector,
    fit_state_dict,
    inherit_matching,
    load_weights,
    read_checkpoint,
    state_dict_of,
)

from .checkpoint import atomic_save
from .config import ConfigError, threshold_spec, validate
from .dist import barrier, init_distributed, resolve_device
from .distiller import Distiller, probe_channels
from .evaluate import evaluate_detector
from .logger import RunLogger
from .runinfo import CHECKPOINT, METRICS_FILE, code_version, now, write_metrics
from .schedule import iteration_plan, lr_factor

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing its result.
_VOLATILE = ("logger", "runs_root", "trainer.progress", "trainer.log_interval", "trainer.checkpoint_interval",
             "trainer.threads", "trainer.overwrite", "trainer.device", "trainer.evaluate", "data.num_workers",
             "data.eval_batch_size")
# The architecture keys a teacher checkpoint must agree on with teacher.*.
_ARCH_KEYS = ("detector", "backbone", "fpn_channels", "p6_from", "anchor_sizes")


# ----------------------------------------------------------------------------- helpers


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _result_config(cfg: DictConfig) -> dict[str, Any]:
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in _VOLATILE)}


def config_digest(cfg: DictConfig) -> str:
    """Digest of everything that changes a run's result (not logging, paths or device)."""
    return hashlib.sha256(json.dumps(_result_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def experiment_info(cfg: DictConfig) -> dict[str, Any]:
    role = cfg.train.role
    methods = list(cfg.distill.methods) if role == "student" else []
    return {
        "table": cfg.experiment.table,
        "row": cfg.experiment.row,
        "seed": cfg.seed,
        "scale": cfg.scale.name,
        "role": role,
        "methods": methods,
        "teacher": f"{cfg.teacher.detector} {cfg.teacher.backbone}" if (role == "teacher" or methods) else None,
        "student": f"{cfg.student.detector} {cfg.student.backbone}" if role == "student" else None,
    }


def synthetic_root(cfg: DictConfig) -> Path:
    """Default cache of the synthetic set: one directory per generator setting."""
    params = OmegaConf.to_container(cfg.data.synthetic, resolve=True)
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(os.environ.get("DFD_CACHE", ".cache")) / "synthetic_coco" / tag


def build_model(mcfg: DictConfig, num_classes: int, data: DictConfig, key: str) -> nn.Module:
    try:
        return build_detector(
            mcfg.detector, mcfg.backbone, num_classes, key=key,
            fpn_channels=mcfg.fpn_channels, p6_from=mcfg.p6_from, norm=mcfg.norm,
            backbone_weights=mcfg.backbone_weights, trainable_layers=mcfg.trainable_layers,
            min_size=data.min_size, max_size=data.max_size, anchor_sizes=tuple(mcfg.anchor_sizes),
            score_thresh=mcfg.score_thresh, nms_thresh=mcfg.nms_thresh,
            detections_per_img=mcfg.detections_per_img, topk_candidates=mcfg.topk_candidates,
        )
    except (OSError, RuntimeError) as err:  # e.g. backbone weights that cannot be downloaded
        raise WeightsError(f"{key}.backbone_weights={mcfg.backbone_weights!r} could not be loaded: {err}") from err


def load_teacher(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The teacher of a distillation run, with its trained weights."""
    tcfg = cfg.teacher
    model = build_model(tcfg, num_classes, cfg.data, "teacher")
    if tcfg.checkpoint:
        ckpt = read_checkpoint(tcfg.checkpoint, "teacher.checkpoint")
        arch = ckpt.get("model_config") or {}
        wrong = [f"teacher.{k}: checkpoint {arch[k]!r}, config {tcfg[k]!r}" for k in _ARCH_KEYS
                 if k in arch and (list(tcfg[k]) if k == "anchor_sizes" else tcfg[k]) != arch[k]]
        if wrong:
            raise ConfigError(f"teacher.checkpoint={tcfg.checkpoint!r} was written for another model: " + "; ".join(wrong))
        if ckpt.get("num_classes") not in (None, num_classes):
            raise ConfigError(f"teacher.checkpoint={tcfg.checkpoint!r} has {ckpt['num_classes']} classes, the data {num_classes}")
        if ckpt.get("finished") is False:
            raise ConfigError(f"teacher.checkpoint={tcfg.checkpoint!r} is from an unfinished run "
                              f"(iteration {ckpt.get('iteration')} of {ckpt.get('total_iters')}); finish it first")
        fit_state_dict(model, state_dict_of(ckpt, "teacher.checkpoint", repr(tcfg.checkpoint)), "teacher.checkpoint", repr(tcfg.checkpoint))
    elif tcfg.weights:
        load_weights(model, tcfg.weights, "teacher.weights")
    return model


def method_params(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Keyword parameters of each selected method, as the method library takes them."""
    out: dict[str, dict[str, Any]] = {}
    for m in cfg.distill.methods:
        params = dict(OmegaConf.to_container(cfg.distill[m], resolve=True))
        if m == "dfd":
            r = cfg.region
            params.update(hd=r.hd, ld=r.ld, alpha=r.alpha, beta=r.beta, threshold=threshold_spec(cfg.threshold))
        out[m] = params
    return out


def build_datasets(cfg: DictConfig):
    """The train and val datasets of ``cfg.data`` (the synthetic set is generated on first use)."""
    d = cfg.data
    root = d.root or (synthetic_root(cfg) if d.kind == "synthetic" else None)
    return build_detection_datasets(
        d.kind, root, min_size=d.min_size, max_size=d.max_size, flip_prob=d.flip_prob,
        filter_empty_train=d.filter_empty_train, synthetic=OmegaConf.to_container(d.synthetic, resolve=True),
    )


def build_components(cfg: DictConfig, device: torch.device):
    """Datasets and the Distiller of a run: the model being trained (the teacher of a
    ``train=teacher`` run, else the student), and for a distillation run the frozen
    teacher with its weights and the losses of every selected method."""
    train_ds, val_ds = build_datasets(cfg)
    num_classes = train_ds.num_classes + 1  # label 0 is background
    role = cfg.train.role
    mcfg = cfg.teacher if role == "teacher" else cfg.student
    model = build_model(mcfg, num_classes, cfg.data, role)
    if mcfg.weights:
        load_weights(model, mcfg.weights, f"{role}.weights")
    teacher = losses = None
    methods = method_params(cfg) if role == "student" else {}
    if methods:
        teacher = load_teacher(cfg, num_classes).to(device)
        model.to(device)
        channels = probe_channels(model, teacher, cfg.distill.levels, FEATURE_MODULES[mcfg.detector])
        losses = FeatureDistillation(methods, channels)
    distiller = Distiller(model, teacher, losses, cfg.distill.levels, FEATURE_MODULES[mcfg.detector]).to(device)
    return train_ds, val_ds, distiller


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


# ----------------------------------------------------------------------------- the run


def finished_record(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a finished run in ``run_dir`` with this config, or None; another config there is an error."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("config_digest") == config_digest(cfg):
        return record
    if cfg.trainer.overwrite:
        path.rename(path.with_name(f"metrics.replaced-{time.strftime('%Y%m%d-%H%M%S')}.json"))
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        return None
    raise ConfigError(f"{run_dir} holds a finished run with another config; use a new directory, "
                      "or trainer.overwrite=true to redo it (the old metrics.json is kept renamed)")


def run_training(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train (and evaluate) the teacher or the student of ``cfg`` in ``run_dir``; return the metrics record.

    A finished run with the same config is not redone; an interrupted one resumes from
    ``checkpoints/last.pth``.
    """
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = finished_record(cfg, run_dir)
    if done is not None:
        log.info("%s already holds this finished run; nothing to do", run_dir)
        return done

    t_start = time.perf_counter()
    info = init_distributed("cuda" if cfg.trainer.device.startswith("cuda") or (cfg.trainer.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(cfg.trainer.device, info)
    amp_dtype = _amp_dtype(cfg.trainer.amp, device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)

    train_ds, val_ds, distiller = build_components(cfg, device)
    model, teacher, losses = distiller.student, distiller.teacher, distiller.losses
    d, role = cfg.data, cfg.train.role
    mcfg = cfg.teacher if role == "teacher" else cfg.student
    num_classes = train_ds.num_classes + 1

    params = distiller.trainable_parameters()
    s = cfg.schedule
    if s.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    ipe = EpochBatchSampler.batches_per_epoch(len(train_ds), d.batch_size, info.world_size)
    if ipe == 0:
        raise ConfigError(f"data.batch_size={d.batch_size} is larger than the {len(train_ds)} training images per process")
    epochs, steps = s.epochs, list(s.steps)
    if role == "teacher" and s.teacher_epochs:
        steps = [round(x * s.teacher_epochs / s.epochs) for x in steps]
        epochs = s.teacher_epochs
    total, milestones = iteration_plan(epochs, steps, ipe, cfg.trainer.max_iters)

    # resume
    ckpt_path = run_dir / CHECKPOINT
    digest = config_digest(cfg)
    start = 0
    if ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path, "checkpoint")
        if ckpt.get("config_digest") != digest:
            diff = _config_diff(ckpt.get("config", {}), _result_config(cfg))
            raise ConfigError(f"{ckpt_path} belongs to a run with another config ({'; '.join(diff[:6])}); "
                              "use a new run directory")
        distiller.student.load_state_dict(ckpt["model"])
        if losses is not None and ckpt.get("distill") is not None:
            losses.load_state_dict(ckpt["distill"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start = int(ckpt["iteration"])
        log.info("resuming %s from iteration %d of %d", run_dir, start, total)
    elif cfg.distill.inherit and teacher is not None:
        copied = inherit_matching(model, teacher.state_dict(), ("backbone.fpn.", "head."))
        log.info("inherited %d tensors of the teacher's neck and head", len(copied))

    train_model: nn.Module = distiller
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(distiller, device_ids=[device.index] if device.type == "cuda" else None)

    experiment = experiment_info(cfg)
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    logger = RunLogger(
        run_dir, plain_cfg, kind=cfg.logger.kind, project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
        name=_run_name(experiment, run_dir), group=f"table{experiment['table']}" if experiment["table"] else None,
        tags=[*experiment["methods"], role, f"scale:{experiment['scale']}", *( [f"row:{experiment['row']}"] if experiment["row"] else []), *cfg.logger.tags],
        enabled=info.is_main,
    )

    def save(iteration: int, finished: bool) -> None:
        if not info.is_main:
            return
        atomic_save(
            {
                "model": distiller.student.state_dict(),
                "distill": losses.state_dict() if losses is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "iteration": iteration,
                "total_iters": total,
                "finished": finished,
                "role": role,
                "model_config": OmegaConf.to_container(mcfg, resolve=True),
                "num_classes": num_classes,
                "label_to_category": {int(k): int(v) for k, v in train_ds.label_to_category.items()},
                "config": _result_config(cfg),
                "config_digest": digest,
                "code_version": code_version(),
                "saved_at": now(),
            },
            ckpt_path,
        )

    # train
    from tqdm import tqdm

    last: dict[str, float] = {}
    bar = tqdm(total=total, initial=start, desc=f"{role} {run_dir.name}", disable=not (cfg.trainer.progress and info.is_main),
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)  # sparse in log files
    train_model.train()
    it = start
    t_loop = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        while it < total:
            epoch, offset = divmod(it, ipe)
            sampler = EpochBatchSampler(len(train_ds), d.batch_size, seed=cfg.seed, epoch=epoch, rank=info.rank, world_size=info.world_size, start=offset)
            # A generator of its own, so creating the loader draws nothing from the global RNG (exact resumption)
            loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers,
                                pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            for images, targets in loader:
                if it >= total:
                    break
                lr = s.lr * lr_factor(it, warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio, milestones=milestones, gamma=s.gamma)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss_terms = train_model(images, targets)
                loss = sum(loss_terms.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at iteration {it}: " + ", ".join(f"{k}={v.item():.4g}" for k, v in loss_terms.items()))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if s.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, s.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                it += 1
                bar.update(1)
                if it % cfg.trainer.log_interval == 0 or it == total:
                    last = {_loss_key(k): v.item() for k, v in loss_terms.items()}
                    last["loss/total"] = loss.item()
                    logger.log({**last, "lr": lr, "epoch": epoch}, step=it)
                    bar.set_postfix(loss=f"{last['loss/total']:.3f}", lr=f"{lr:.2g}")
                if it % cfg.trainer.checkpoint_interval == 0 and it < total:
                    save(it, finished=False)
    finally:
        bar.close()
    train_s = time.perf_counter() - t_loop
    steps_run = it - start
    save(it, finished=True)
    barrier(info)

    timings: dict[str, Any] = {"train_s": round(train_s, 3), "step_s": round(train_s / steps_run, 4) if steps_run else None,
                               "iterations": total, "iterations_this_process": steps_run}
    if device.type == "cuda":
        timings["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    metrics: dict[str, Any] = {}
    if cfg.trainer.evaluate and info.is_main:
        t_eval = time.perf_counter()
        val_loader = DataLoader(val_ds, batch_size=d.eval_batch_size, shuffle=False, collate_fn=collate, num_workers=d.num_workers)
        metrics = evaluate_detector(distiller.student, val_loader, val_ds, device=device, amp_dtype=amp_dtype, progress=cfg.trainer.progress)
        timings["eval_s"] = round(time.perf_counter() - t_eval, 3)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    record: dict[str, Any] = {}
    if info.is_main:
        logger.log({k: v for k, v in metrics.items() if v is not None}, step=it)
        logger.summary({**metrics, **{f"time/{k}": v for k, v in timings.items()}})
        record = write_metrics(run_dir, metrics=metrics, losses=last, timings=timings, experiment=experiment,
                               version=code_version(), config_digest=digest)
        log.info("finished %s: %s", run_dir, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if v is not None))
    logger.finish()
    barrier(info)
    return record


def _loss_key(name: str) -> str:
    return name if name.startswith("distill/") else f"loss/{name}"


def _run_name(experiment: dict[str, Any], run_dir: Path) -> str:
    if experiment["table"] is not None:
        return f"table{experiment['table']}-{experiment['row']}-seed{experiment['seed']}"
    return f"{experiment['role']}-{run_dir.name}"
