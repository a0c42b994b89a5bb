"""The one training loop, for teachers and students of every model family, in named parts.

:func:`run_training` reads as the recipe: set up the process, build the run (data, models,
losses), build its optimisation (parameter groups, optimizer, schedule, EMA), resume or
start, train the epochs, evaluate, finish. The engine speaks to models only through the
family interface (:mod:`dfd.models.family`) and never names a family.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from dfd.data import EpochBatchSampler, collate
from dfd.distill import FeatureDistillation
from dfd.models import Family, build_model, get_family, inherit_matching
from dfd.rundir import (
    CHECKPOINT,
    CONFIG_FILE,
    FEATURE_L2,
    LOG_FILE,
    METRICS_FILE,
    REPLACED_PREFIX,
    RunLock,
    config_diff,
    config_digest,
    discard,
    is_fresh,
    move_contents_aside,
    read_config,
    read_json,
    remove_temp_files,
    run_state,
    write_config,
)

from . import teachers
from .calibrate import measure_terms, method_totals, start_gains
from .checkpoint import atomic_save, load_teacher, model_record, rng_state, set_rng_state
from .config import Config, ConfigError, distill_levels, effective_lr, load_config, method_params, to_plain
from .dist import DistInfo, barrier
from .distiller import Distiller, probe_channels
from .evaluate import evaluate_model
from .evaluators import primary_metric
from .logger import RunLogger
from .optim import build_ema, build_optimizer, build_scheduler, current_lrs, param_groups
from .runinfo import code_version, describe_model, experiment_info, metrics_table, now, run_label, write_failure, write_metrics
from .setup import amp_dtype, datasets, memory_format, setup_process

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one run holds while it trains."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    family: Family
    train_set: Any
    val_set: Any
    distiller: Distiller
    plain: dict[str, Any]  # the config as plain values (checkpoints, digest, W&B)
    digest: str
    iters_per_epoch: int = 0
    total: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None
    start: int = 0
    optimization: dict[str, Any] = field(default_factory=dict)  # the effective lr and total batch
    timings: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0  # iterations done
    saved: int = 0  # the iteration the run directory's checkpoint holds (0: none yet)
    started: float = field(default_factory=time.perf_counter)

    @property
    def model(self) -> nn.Module:
        """The model whose weights are evaluated: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.distiller.student


# ----------------------------------------------------------------------------- set-up


def build_distiller(cfg: Config, num_classes: int, device: torch.device) -> Distiller:
    """The trained model, and for a distillation run the frozen teacher and the losses of every method."""
    model = build_model(cfg.model, num_classes, cfg.role)
    if not cfg.distilling:
        return Distiller(model).to(device)
    teacher = load_teacher(cfg.teacher, num_classes).to(device)
    model.to(device)
    losses = FeatureDistillation(method_params(cfg), probe_channels(model, teacher, _used_levels(cfg), device))
    if cfg.trainer.compile_losses:
        losses.compile()  # in place: the module's state-dict names stay those of an uncompiled run
    return Distiller(model, teacher, losses).to(device)


def verify_teacher(cfg: Config, teacher: nn.Module, val_set, info: DistInfo, device: torch.device) -> None:
    """``teacher.verify``: the teacher is evaluated before the first step and refused far below its published AP."""
    family = get_family(cfg.teacher.family)
    metrics = evaluate_model(teacher, val_set, family.task, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
                             device=device, amp_dtype=amp_dtype(cfg.trainer.amp, device, family), info=info)
    teachers.verify(metrics, cfg.teacher, primary_metric(family.task))


def _used_levels(cfg: Config) -> list[str]:
    levels = distill_levels(cfg)
    for m in cfg.distill.methods:
        levels += [lvl for lvl in (getattr(cfg.distill, m).levels or []) if lvl not in levels]
    return levels


def build_run(cfg: Config, run_dir: Path, info: DistInfo, device: torch.device, plain: dict[str, Any] | None = None) -> Run:
    family = get_family(cfg.model.family, cfg.role)
    train_set, val_set = datasets(cfg, family)
    distiller = build_distiller(cfg, train_set.num_classes, device).to(memory_format=memory_format(cfg))
    if cfg.distilling and cfg.teacher.verify:
        verify_teacher(cfg, distiller.teacher, val_set, info, device)
    if info.enabled and device.type == "cuda" and cfg.trainer.sync_bn:
        distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    plain = plain if plain is not None else to_plain(cfg)
    return Run(cfg, run_dir, info, device, amp_dtype(cfg.trainer.amp, device, family), family, train_set, val_set,
               distiller, plain, config_digest(plain))


def _groups(run: Run) -> list[int] | None:
    return run.train_set.aspect_groups() if run.cfg.data.group_by_aspect else None


def build_optimization(run: Run) -> None:
    """Iterations, parameter groups, optimizer, learning-rate schedule, grad scaler and EMA."""
    cfg, s, d = run.cfg, run.cfg.schedule, run.cfg.data
    run.iters_per_epoch = EpochBatchSampler.batches_per_epoch(len(run.train_set), d.batch_size, run.info.world_size, _groups(run))
    if run.iters_per_epoch == 0:
        raise ConfigError(f"data.batch_size={d.batch_size} is larger than the {len(run.train_set)} training images per process")
    epochs, steps = s.epochs, list(s.steps)
    if cfg.role == "teacher" and s.teacher_epochs:
        steps, epochs = [round(x * s.teacher_epochs / s.epochs) for x in steps], s.teacher_epochs
    run.total = epochs * run.iters_per_epoch
    if cfg.trainer.max_iters is not None:
        run.total = min(run.total, cfg.trainer.max_iters)
    lr, total_batch = effective_lr(s, d.batch_size, run.info.world_size)
    run.optimization = {"lr": lr, "total_batch": total_batch, "base_lr": s.lr, "base_batch": s.base_batch}
    if run.info.is_main:
        log.info("learning rate %.4g for a total batch of %d (schedule.lr=%g is for schedule.base_batch=%s)",
                 lr, total_batch, s.lr, s.base_batch)
    groups = param_groups(run.distiller.trainable_modules(), weight_decay=s.weight_decay,
                          no_decay_norm_bias=s.no_decay_norm_bias, no_decay_keys=s.no_decay_keys)
    run.optimizer = build_optimizer(groups, name=s.optimizer, lr=lr, momentum=s.momentum, nesterov=s.nesterov,
                                    betas=tuple(s.betas), weight_decay=s.weight_decay)
    run.scheduler = build_scheduler(run.optimizer, policy=s.policy, total_iters=max(run.total, 1), warmup_iters=s.warmup_iters,
                                    warmup_ratio=s.warmup_ratio, milestones=[x * run.iters_per_epoch for x in steps],
                                    gamma=s.gamma, min_lr_ratio=s.min_lr_ratio, power=s.power)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    if s.ema_decay is not None:
        run.ema = build_ema(run.distiller.student, decay=s.ema_decay, ramp=s.ema_ramp)


# ----------------------------------------------------------------------------- checkpoints


def save(run: Run, iteration: int, finished: bool) -> None:
    """Write the checkpoint (main process only), atomically."""
    run.saved = iteration
    if not run.info.is_main:
        return
    distiller = run.distiller
    atomic_save({
        "model": distiller.student.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "distill": distiller.losses.state_dict() if distiller.losses is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "iteration": iteration,
        "total_iters": run.total,
        "finished": finished,
        "role": run.cfg.role,
        **model_record(run.family.name, run.cfg.model, run.train_set.num_classes, run.train_set.label_to_category),
        "config": run.plain,
        "config_digest": run.digest,
        "code_version": code_version(),
        "saved_at": now(),
    }, run.run_dir / CHECKPOINT)


def resume_or_start(run: Run) -> None:
    """Resume from the run directory's checkpoint (same config only), or start (inheriting if asked)."""
    from dfd.models import read_checkpoint

    path = run.run_dir / CHECKPOINT
    if not path.is_file():
        if run.cfg.distilling and run.cfg.distill.inherit:
            prefixes = get_family(run.cfg.student.family).inherit_prefixes
            copied = inherit_matching(run.distiller.student, run.distiller.teacher.state_dict(), prefixes)
            log.info("inherited %d tensors of the teacher's neck and head", len(copied))
        return
    ckpt = read_checkpoint(path, "checkpoint")
    if ckpt.get("config_digest") != run.digest:
        diff = config_diff(ckpt.get("config", {}), run.plain)
        raise ConfigError(f"{path} belongs to a run with another config ({'; '.join(diff[:6])}); use a new run directory")
    run.distiller.student.load_state_dict(ckpt["model"])
    if run.distiller.losses is not None and ckpt.get("distill") is not None:
        run.distiller.losses.load_state_dict(ckpt["distill"])
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.start = run.saved = run.iteration = int(ckpt["iteration"])
    log.info("resuming %s from iteration %d of %d", run.run_dir, run.start, run.total)


def calibrate_distillation(run: Run) -> None:
    """``distill.start_ratio``: before the first step, each method's terms get the gain that puts them at that
    ratio to the task loss on the first ``distill.calibration_batches`` batches (:mod:`dfd.engine.calibrate`).
    A resumed run keeps the gains its checkpoint holds. The gains go into metrics.json's ``optimization``."""
    d, losses = run.cfg.distill, run.distiller.losses
    if losses is None or d.start_ratio is None:
        return
    if run.start == 0:
        announce_epoch(run, 0)
        task, terms = measure_terms(run.distiller, epoch_loader(run, 0, 0), d.calibration_batches, run.device,
                                    run.amp_dtype, run.info)
        gains = start_gains(task, terms, d.start_ratio)
        losses.set_gains(gains)
        totals = method_totals(terms)
        log.info("distill.start_ratio=%g: task loss %.4g over %d batches; %s", d.start_ratio, task, d.calibration_batches,
                 ", ".join(f"{m} terms {totals[m]:.4g} -> gain {g:.3g}" for m, g in gains.items()))
    run.optimization["distill_gains"] = {m: losses.gain_of(m) for m in losses.losses}


# ----------------------------------------------------------------------------- training


def epoch_loader(run: Run, epoch: int, offset: int) -> DataLoader:
    """The loader of one epoch from batch ``offset`` on; its order is a function of (seed, epoch) only."""
    d = run.cfg.data
    sampler = EpochBatchSampler(len(run.train_set), d.batch_size, seed=run.cfg.seed, epoch=epoch, rank=run.info.rank,
                                world_size=run.info.world_size, start=offset, groups=_groups(run))
    return DataLoader(run.train_set, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers,
                      pin_memory=run.device.type == "cuda")


def announce_epoch(run: Run, epoch: int) -> None:
    """Call ``set_epoch(epoch, epochs)`` on the train set and the trained model where they define it (e.g. augmentations
    that stop for the last epochs, a target assignment that changes after the first ones). ``epochs`` counts the
    run's epochs, ceil(total iterations / iterations per epoch); ``epoch`` comes from the iteration, so a resumed
    run announces the epoch it resumes in."""
    epochs = -(-run.total // run.iters_per_epoch)
    for obj in (run.train_set, run.distiller.student):
        hook = getattr(obj, "set_epoch", None)
        if callable(hook):
            hook(epoch, epochs)


def step(run: Run, train_model: nn.Module, images, targets, iteration: int) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss terms (with ``loss/total``)."""
    batch = run.distiller.prepare(images, targets, run.device)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        terms = train_model(batch)
    loss = sum(terms.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at iteration {iteration}: "
                                 + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.schedule.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], run.cfg.schedule.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.distiller.student)
    return {**terms, "total": loss}


class FeatureDistance:
    """The distance between the teacher's map and the student's, per method and level, at the logged steps
    (the paper's Fig. 3b): the mean squared difference per element after the 1x1 alignment (``aligned``)
    and, where the method has f_trans, after it (``f_trans``); logged as :data:`~dfd.rundir.FEATURE_L2`.

    Forward hooks on the loss modules that have an ``align`` compute it from the maps the loss was given,
    under no_grad and only while :attr:`armed`: it changes nothing the run computes.
    """

    def __init__(self, losses: nn.Module | None) -> None:
        self.armed = False
        self.values: dict[str, float] = {}
        self.handles = [module.register_forward_hook(self._hook(method, level))
                        for method, per_level in (losses.losses.items() if losses is not None else ())
                        for level, module in per_level.items() if isinstance(getattr(module, "align", None), nn.Module)]

    def _hook(self, method: str, level: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self.armed:
                return
            with torch.no_grad():
                target, aligned = args[1].float(), module.align(args[0])
                maps = {"aligned": aligned}
                if getattr(module, "transform", None) is not None:
                    maps["f_trans"] = module.transform(aligned)
                for kind, feat in maps.items():
                    key = FEATURE_L2.format(method=method, level=level, kind=kind)
                    self.values[key] = (target - feat.float()).pow(2).mean().item()
        return hook

    def pop(self) -> dict[str, float]:
        values, self.values = self.values, {}
        return values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def distill_ratios(values: dict[str, float]) -> dict[str, float]:
    """Each distillation term against the task loss, ``ratio/<term> = L_term / Σ_task L``: the number that says
    at once when a distillation weight is off for a model or data set (the paper's settings start near 1,
    docs/choices.md). Task terms are the ``loss/*`` values other than ``loss/total``."""
    task = sum(v for k, v in values.items() if k.startswith("loss/") and k != "loss/total")
    if task <= 0:
        return {}
    return {f"ratio/{k.removeprefix('distill/')}": v / task for k, v in values.items() if k.startswith("distill/")}


def _log_values(terms: dict[str, torch.Tensor], run: Run, epoch: int) -> dict[str, float]:
    values = {(k if k.startswith("distill/") else f"loss/{k}"): v.item() for k, v in terms.items()}
    values.update(distill_ratios(values))
    values.update({f"lr/{k}": v for k, v in current_lrs(run.optimizer).items()}, epoch=epoch)
    return values


def train(run: Run, logger: RunLogger) -> dict[str, float]:
    """Train from ``run.start`` to ``run.total``; periodic checkpoints; returns the last logged values."""
    from tqdm import tqdm

    train_model: nn.Module = run.distiller
    if run.info.enabled:
        ids = [run.device.index] if run.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(run.distiller, device_ids=ids)
    bar = tqdm(total=run.total, initial=run.start, desc=run_label(run.cfg, run.run_dir), dynamic_ncols=True,
               disable=not (run.cfg.trainer.progress and run.info.is_main), mininterval=0.5 if sys.stderr.isatty() else 30.0)
    last: dict[str, float] = {}
    it, t_loop = run.start, time.perf_counter()
    distance = FeatureDistance(run.distiller.losses)

    def logged(i: int) -> bool:
        return i % run.cfg.trainer.log_interval == 0 or i == run.total
    train_model.train()
    try:
        while it < run.total:
            epoch, offset = divmod(it, run.iters_per_epoch)
            announce_epoch(run, epoch)
            for images, targets in epoch_loader(run, epoch, offset):
                if it >= run.total:
                    break
                distance.armed = logged(it + 1)
                terms = step(run, train_model, images, targets, it)
                it = run.iteration = it + 1
                bar.update(1)
                if logged(it):
                    last = {**_log_values(terms, run, epoch), **distance.pop()}
                    logger.log(last, step=it)
                    bar.set_postfix(loss=f"{last['loss/total']:.3f}")
                if it % run.cfg.trainer.checkpoint_interval == 0 and it < run.total:
                    save(run, it, finished=False)
    finally:
        bar.close()
        distance.remove()
    seconds, steps = time.perf_counter() - t_loop, it - run.start
    run.timings.update(train_s=round(seconds, 3), step_s=round(seconds / steps, 4) if steps else None,
                       iterations=run.total, iterations_this_process=steps)
    return {k: v for k, v in last.items() if k.startswith(("loss/", "distill/"))}


def evaluate(run: Run) -> dict[str, float | None]:
    """Every rank evaluates its share of the validation set with the evaluated weights."""
    t = time.perf_counter()
    d = run.cfg.data
    metrics = evaluate_model(run.model, run.val_set, run.family.task, batch_size=d.eval_batch_size, num_workers=d.num_workers,
                             device=run.device, amp_dtype=run.amp_dtype, info=run.info, progress=run.cfg.trainer.progress)
    run.timings["eval_s"] = round(time.perf_counter() - t, 3)
    return metrics


# ----------------------------------------------------------------------------- the run directory


def _is_main_process() -> bool:
    """Rank 0 under torchrun, or a single process: the process that owns the run directory's files."""
    return int(os.environ.get("RANK", "0")) == 0


def _refusal(run_dir: Path, plain: dict[str, Any], what: str) -> str:
    recorded = read_config(run_dir)
    diff = config_diff(recorded, plain) if recorded else [f"its {CONFIG_FILE} is missing or unreadable"]
    shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    return (f"{run_dir} holds {what} with another config ({shown}); use a new directory, or trainer.overwrite=true "
            f"to redo it there (the old run's files are then kept in {run_dir / REPLACED_PREFIX}<time>/)")


def finished_record(cfg: Config, run_dir: Path, digest: str, plain: dict[str, Any] | None = None,
                    owner: bool = True) -> dict[str, Any] | None:
    """The metrics of a finished run in ``run_dir`` with this config, or None (nothing there, or a run of
    this config to resume). A run of another config there is refused, naming what differs; with
    ``trainer.overwrite=true`` its files are moved into ``<run_dir>/replaced-<time>/`` (``owner`` only)."""
    state = run_state(run_dir, digest)
    if state == "finished":
        return read_json(run_dir / METRICS_FILE)
    if state != "stale" or not owner:
        return None
    if cfg.trainer.overwrite:
        moved = move_contents_aside(run_dir)
        log.warning("trainer.overwrite=true: the run of another config in %s is kept in %s", run_dir, moved)
        return None
    what = "a finished run" if (run_dir / METRICS_FILE).is_file() else "an unfinished run"
    raise ConfigError(_refusal(run_dir, plain if plain is not None else to_plain(cfg), what))


@contextlib.contextmanager
def run_log(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Copy the run's log records (``dfd`` at INFO and up, and whatever reaches the root logger) into
    ``<run_dir>/train.log``, however the run was started (Hydra's app, or :func:`run_training` called directly)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root, package = logging.getLogger(), logging.getLogger("dfd")
    level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        package.setLevel(level)


def interrupted_message(run: Run) -> str:
    """What a Ctrl-C leaves: where the run stopped, what its checkpoint holds, how to resume."""
    held = (f"{run.run_dir / CHECKPOINT} holds iteration {run.saved}" if run.saved
            else "no checkpoint was written yet, so it starts again from iteration 0")
    return (f"interrupted at iteration {run.iteration} of {run.total}: {held}. The same command resumes it from there "
            f"when it uses the same run directory ({run.run_dir})")


# ----------------------------------------------------------------------------- the run


def objective(cfg: Config, record: dict[str, Any]) -> float | None:
    """The metric a run returns to a Hydra sweeper: ``trainer.objective``, or its task's primary metric."""
    key = cfg.trainer.objective or primary_metric(get_family(cfg.model.family).task)
    return (record.get("metrics") or {}).get(key)


def start_run(cfg: Config, run_dir: Path, plain: dict[str, Any]) -> Run:
    """Everything before the first step: process, data, models, optimisation, resumption; then ``config.yaml``."""
    started = time.perf_counter()
    scale = cfg.scale.name
    log.info("%s trains the %s", run_label(cfg, run_dir), describe_model(cfg.model, cfg.role, scale))
    if cfg.distilling:
        log.info("distilling %s from the %s, checkpoint %s", "+".join(cfg.distill.methods),
                 describe_model(cfg.teacher, "teacher", scale), cfg.teacher.checkpoint or cfg.teacher.weights)
    info, device = setup_process(cfg)
    run = build_run(cfg, run_dir, info, device, plain)
    run.started = started
    build_optimization(run)
    resume_or_start(run)
    calibrate_distillation(run)
    if info.is_main:
        write_config(run_dir, run.plain)
    return run


def train_and_finish(run: Run) -> dict[str, Any]:
    """Train, evaluate, write metrics.json; a failure writes failed.json, a Ctrl-C says how to resume."""
    cfg, info, device, run_dir = run.cfg, run.info, run.device, run.run_dir
    logger = None
    try:
        logger = RunLogger.for_run(run_dir, cfg, run.plain, enabled=info.is_main)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        losses = train(run, logger)
        save(run, run.total, finished=True)
        barrier(info)
        if device.type == "cuda":
            run.timings["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        metrics = evaluate(run) if cfg.trainer.evaluate else {}
        run.timings["total_s"] = round(time.perf_counter() - run.started, 3)
        record: dict[str, Any] = {}
        if info.is_main:
            logger.log({k: v for k, v in metrics.items() if v is not None}, step=run.total)
            logger.summary({**metrics, **{f"time/{k}": v for k, v in run.timings.items()}})
            record = write_metrics(run_dir, metrics=metrics, losses=losses, timings=run.timings, experiment=experiment_info(cfg),
                                   version=code_version(), config_digest=run.digest, optimization=run.optimization)
            log.info("finished %s (%s, %d iterations, %.0f s):\n%s", run_dir, run_label(cfg, run_dir), run.total,
                     run.timings["total_s"], metrics_table(metrics))
        barrier(info)
        return record
    except KeyboardInterrupt:
        if info.is_main:
            log.warning("%s", interrupted_message(run))
        raise
    except Exception as err:
        if info.is_main:
            write_failure(run_dir, err, experiment_info(cfg))
            log.error("%s failed at iteration %d: %s: %s", run_dir, run.iteration, type(err).__name__, err)
        raise
    finally:
        if logger is not None:
            logger.finish()


def run_training(cfg: Config | DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train (and evaluate) the teacher or the student of ``cfg`` in ``run_dir``; return the metrics record.

    The run holds ``run_dir``'s lock for its whole life (a second run there is refused at once).
    A finished run with the same config is not redone; an interrupted one resumes from
    ``checkpoints/last.pth``; a run of another config there is refused before any file is touched.
    A run that fails before its first step in a fresh directory leaves no directory behind.
    """
    cfg = load_config(cfg)
    if cfg.distilling:
        cfg = teachers.resolve_checkpoint(cfg)  # teacher.checkpoint=auto: the published one, fetched and converted
    run_dir, main = Path(run_dir), _is_main_process()
    fresh = is_fresh(run_dir)
    lock = RunLock(run_dir).acquire() if main else None
    try:
        removed = remove_temp_files(run_dir) if main else []
        run_dir.mkdir(parents=True, exist_ok=True)
        plain = to_plain(cfg)
        done = finished_record(cfg, run_dir, config_digest(plain), plain, owner=main)
        if done is not None:
            log.info("%s already holds this finished run; nothing to do", run_dir)
            return done
        started = False
        try:
            with run_log(run_dir, enabled=main):
                for path in removed:
                    log.info("removed %s, left by a run killed while writing it", path)
                run = start_run(cfg, run_dir, plain)
                started = True
                return train_and_finish(run)
        except BaseException:
            if main and fresh and not started:
                discard(run_dir, lock)  # nothing of it is kept: the directory goes too
            raise
    finally:
        if lock is not None:
            lock.release()


__all__ = ["Run", "finished_record", "objective", "run_training"]
