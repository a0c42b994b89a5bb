"""Structured configuration: the schema of every Hydra group, and value checks.

OmegaConf checks types and unknown keys when the groups are composed onto these
dataclasses; :func:`validate` checks values (choices, ranges, files) and runs before
any model is built, raising :class:`ConfigError` with the key and the value at fault.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dfd.distill import CONSTRAINTS, METHODS, TRANSFORM_STRUCTURES, parse_threshold
from dfd.models import BACKBONES, DETECTOR_LEVELS, DETECTORS, NORMS, ComponentNotImplemented

DATA_KINDS = ("synthetic", "coco")
KNOWN_DATA_KINDS = DATA_KINDS + ("coco_keypoints", "cityscapes")
ROLES = ("student", "teacher")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "bf16", "fp16", "off")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the value."""


@dataclass
class ModelConfig:
    """A detector (teacher or student)."""

    detector: str = "retinanet"
    backbone: str = "resnet50"
    backbone_weights: Optional[str] = None  # torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V1
    weights: Optional[str] = None  # whole detector: torchvision weights name or checkpoint file
    checkpoint: Optional[str] = None  # teacher only: a checkpoint written by a `train=teacher` run
    fpn_channels: int = 256
    p6_from: str = "c5"
    norm: str = "frozen_bn"
    trainable_layers: int = 3
    anchor_sizes: List[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000


@dataclass
class DFDMethodConfig:
    temperature: float = 1.0  # T in A(F); the paper's A(F) has none (T = 1)
    transform: str = "generation"  # structure of f_trans


@dataclass
class MSEMethodConfig:
    weight: float = 2e-5


@dataclass
class FGDMethodConfig:
    temperature: float = 0.5
    alpha_fgd: float = 1e-3
    beta_fgd: float = 5e-4
    gamma_fgd: float = 5e-4
    lambda_fgd: float = 5e-6


@dataclass
class MGDMethodConfig:
    alpha: float = 2e-5
    lambda_mgd: float = 0.65


@dataclass
class PKDMethodConfig:
    weight: float = 10.0


@dataclass
class CWDMethodConfig:
    tau: float = 1.0
    weight: float = 5.0


@dataclass
class DistillConfig:
    methods: List[str] = field(default_factory=list)  # [] = no distillation; several = their sum
    levels: List[str] = field(default_factory=lambda: ["p3", "p4", "p5", "p6", "p7"])
    inherit: bool = False  # initialise the student's neck and head from the teacher where shapes match
    dfd: DFDMethodConfig = field(default_factory=DFDMethodConfig)
    mse: MSEMethodConfig = field(default_factory=MSEMethodConfig)
    fgd: FGDMethodConfig = field(default_factory=FGDMethodConfig)
    mgd: MGDMethodConfig = field(default_factory=MGDMethodConfig)
    pkd: PKDMethodConfig = field(default_factory=PKDMethodConfig)
    cwd: CWDMethodConfig = field(default_factory=CWDMethodConfig)


@dataclass
class RegionConfig:
    """Constraint and weight of each disparity region (DFD)."""

    hd: str = "tf"
    ld: str = "mse"
    alpha: float = 2e-5  # weight of L_HD
    beta: float = 1e-5  # weight of L_LD


@dataclass
class ThresholdConfig:
    kind: str = "mean"  # mean | median | quantile | fixed
    value: Optional[float] = None  # the quantile Q (quantile) or P itself (fixed)


@dataclass
class SyntheticConfig:
    seed: int = 0
    num_train: int = 256
    num_val: int = 64
    min_side: int = 128
    max_side: int = 160
    max_objects: int = 5


@dataclass
class DataConfig:
    kind: str = "synthetic"
    root: Optional[str] = None  # synthetic: cache dir (default .cache/synthetic_coco under the repo)
    min_size: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5
    batch_size: int = 2  # per process
    eval_batch_size: int = 2
    num_workers: int = 4
    filter_empty_train: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ScheduleConfig:
    optimizer: str = "sgd"  # sgd (the paper's setting) | adamw (smoke scale: learns from scratch in minutes)
    epochs: int = 12
    steps: List[int] = field(default_factory=lambda: [8, 11])  # epochs after which lr *= gamma
    teacher_epochs: Optional[int] = None  # train=teacher: epochs (steps scaled alike); None = epochs
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: Optional[float] = 35.0


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto = bf16 on CUDA, off on CPU
    max_iters: Optional[int] = None  # cap on the run's iterations
    log_interval: int = 20
    checkpoint_interval: int = 1000  # iterations between periodic checkpoints
    evaluate: bool = True
    overwrite: bool = False  # a finished run in the same directory is redone only when true
    progress: bool = True
    threads: Optional[int] = None  # torch CPU threads; None = torch's default


@dataclass
class LoggerConfig:
    kind: str = "none"
    project: str = "dfd"
    entity: Optional[str] = None
    mode: str = "offline"
    tags: List[str] = field(default_factory=list)


@dataclass
class TrainRoleConfig:
    role: str = "student"


@dataclass
class ScaleConfig:
    name: str = "full"


@dataclass
class ExperimentConfig:
    """Identity of a run inside a paper table (set by the table sweeps)."""

    table: Optional[int] = None
    row: Optional[str] = None


@dataclass
class Config:
    train: TrainRoleConfig = field(default_factory=TrainRoleConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    seed: int = 0
    runs_root: str = "runs"


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    """Register the schema as ``config_schema`` (first entry of conf/config.yaml's defaults)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def compose_config(overrides: Sequence[str], *, return_hydra_config: bool = False) -> DictConfig:
    """The config ``scripts/train.py`` would get for these command-line overrides (without running Hydra's app)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


# ---------------------------------------------------------------------------- checks


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {expected}")


def _choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        _fail(key, value, f"expected one of {', '.join(choices)}")


def _non_negative(key: str, value: Any) -> None:
    if value is None or value < 0:
        _fail(key, value, "expected a non-negative number")


def _positive(key: str, value: Any) -> None:
    if value is None or value <= 0:
        _fail(key, value, "expected a positive number")


def _check_model(cfg: ModelConfig | DictConfig, key: str) -> None:
    if cfg.detector not in DETECTORS:
        raise ComponentNotImplemented(f"{key}.detector={cfg.detector!r} is not implemented (available: {', '.join(DETECTORS)})")
    _choice(f"{key}.backbone", cfg.backbone, list(BACKBONES))
    _choice(f"{key}.norm", cfg.norm, NORMS)
    _choice(f"{key}.p6_from", cfg.p6_from, ("c5", "p5"))
    _positive(f"{key}.fpn_channels", cfg.fpn_channels)
    if not 0 <= cfg.trainable_layers <= 5:
        _fail(f"{key}.trainable_layers", cfg.trainable_layers, "expected 0..5")
    if len(cfg.anchor_sizes) != len(DETECTOR_LEVELS[cfg.detector]) or any(s <= 0 for s in cfg.anchor_sizes):
        _fail(f"{key}.anchor_sizes", list(cfg.anchor_sizes), f"expected {len(DETECTOR_LEVELS[cfg.detector])} positive sizes")
    if not 0 <= cfg.score_thresh < 1:
        _fail(f"{key}.score_thresh", cfg.score_thresh, "expected a number in [0, 1)")
    for name in ("weights", "checkpoint"):
        value = cfg[name] if isinstance(cfg, DictConfig) else getattr(cfg, name)
        if value and _looks_like_path(value) and not Path(value).is_file():
            _fail(f"{key}.{name}", value, "file does not exist")


def _looks_like_path(value: str) -> bool:
    return os.path.sep in value or value.endswith((".pth", ".pt", ".ckpt"))


def _check_distill(cfg: DictConfig) -> None:
    d = cfg.distill
    for i, m in enumerate(d.methods):
        _choice(f"distill.methods[{i}]", m, list(METHODS))
    if len(set(d.methods)) != len(d.methods):
        _fail("distill.methods", list(d.methods), "a method is listed twice")
    levels = DETECTOR_LEVELS[cfg.student.detector]
    if d.methods and not d.levels:
        _fail("distill.levels", list(d.levels), "expected at least one level")
    for i, lvl in enumerate(d.levels):
        _choice(f"distill.levels[{i}]", lvl, list(levels))
    _positive("distill.dfd.temperature", d.dfd.temperature)
    _choice("distill.dfd.transform", d.dfd.transform, TRANSFORM_STRUCTURES)
    for key in ("mse.weight", "fgd.alpha_fgd", "fgd.beta_fgd", "fgd.gamma_fgd", "fgd.lambda_fgd", "mgd.alpha", "pkd.weight", "cwd.weight"):
        _non_negative(f"distill.{key}", OmegaConf.select(d, key))
    _positive("distill.fgd.temperature", d.fgd.temperature)
    _positive("distill.cwd.tau", d.cwd.tau)
    if not 0 <= d.mgd.lambda_mgd < 1:
        _fail("distill.mgd.lambda_mgd", d.mgd.lambda_mgd, "expected a mask ratio in [0, 1)")


def _check_region(cfg: DictConfig) -> None:
    _choice("region.hd", cfg.region.hd, CONSTRAINTS)
    _choice("region.ld", cfg.region.ld, CONSTRAINTS)
    _non_negative("region.alpha", cfg.region.alpha)
    _non_negative("region.beta", cfg.region.beta)
    t = cfg.threshold
    _choice("threshold.kind", t.kind, ("mean", "median", "quantile", "fixed"))
    if t.kind in ("quantile", "fixed") and t.value is None:
        _fail("threshold.value", t.value, f"threshold.kind={t.kind} needs a value")
    try:
        parse_threshold(threshold_spec(t))
    except ValueError as err:
        raise ConfigError(f"threshold.value={t.value!r} is invalid: {err}") from err


def threshold_spec(t: ThresholdConfig | DictConfig) -> str | float:
    """The threshold as the method library takes it ("mean", "quantile:0.7", 0.3, ...)."""
    if t.kind == "quantile":
        return f"quantile:{t.value}"
    if t.kind == "fixed":
        return float(t.value)
    return t.kind


def _check_data(cfg: DictConfig) -> None:
    d = cfg.data
    if d.kind not in KNOWN_DATA_KINDS:
        _fail("data.kind", d.kind, f"expected one of {', '.join(DATA_KINDS)}")
    if d.kind not in DATA_KINDS:
        raise ComponentNotImplemented(f"data.kind={d.kind!r} is not implemented (available: {', '.join(DATA_KINDS)})")
    if d.kind == "coco":
        if not d.root:
            _fail("data.root", d.root, "data=coco needs data.root=PATH (a COCO 2017 layout)")
        if not Path(d.root).is_dir():
            _fail("data.root", d.root, "directory does not exist")
    for key in ("min_size", "max_size", "batch_size", "eval_batch_size"):
        _positive(f"data.{key}", d[key])
    if d.min_size > d.max_size:
        _fail("data.min_size", d.min_size, f"must not exceed data.max_size={d.max_size}")
    if not 0 <= d.flip_prob <= 1:
        _fail("data.flip_prob", d.flip_prob, "expected a probability in [0, 1]")
    _non_negative("data.num_workers", d.num_workers)


def _check_schedule(cfg: DictConfig) -> None:
    s = cfg.schedule
    _positive("schedule.epochs", s.epochs)
    if s.teacher_epochs is not None:
        _positive("schedule.teacher_epochs", s.teacher_epochs)
    if list(s.steps) != sorted(s.steps) or any(x <= 0 or x > s.epochs for x in s.steps):
        _fail("schedule.steps", list(s.steps), f"expected increasing epochs in 1..{s.epochs}")
    _choice("schedule.optimizer", s.optimizer, OPTIMIZERS)
    _positive("schedule.lr", s.lr)
    for key in ("momentum", "weight_decay", "warmup_iters"):
        _non_negative(f"schedule.{key}", s[key])
    if not 0 < s.gamma <= 1:
        _fail("schedule.gamma", s.gamma, "expected a factor in (0, 1]")
    if not 0 < s.warmup_ratio <= 1:
        _fail("schedule.warmup_ratio", s.warmup_ratio, "expected a factor in (0, 1]")
    if s.clip_grad is not None:
        _positive("schedule.clip_grad", s.clip_grad)


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        _fail("trainer.device", dev, "expected auto, cpu, cuda or cuda:N")
    _choice("trainer.amp", t.amp, AMP_MODES)
    if t.max_iters is not None:
        _positive("trainer.max_iters", t.max_iters)
    _positive("trainer.log_interval", t.log_interval)
    _positive("trainer.checkpoint_interval", t.checkpoint_interval)
    if t.threads is not None:
        _positive("trainer.threads", t.threads)
    _choice("logger.kind", cfg.logger.kind, LOGGERS)
    _choice("logger.mode", cfg.logger.mode, WANDB_MODES)


def validate(cfg: DictConfig, require_teacher: bool = True) -> None:
    """Check every value of a composed config; raise ConfigError or ComponentNotImplemented.

    ``require_teacher=False`` skips the check that a distillation run names its teacher
    (used when planning a table whose teacher is still to be trained).
    """
    _choice("train.role", cfg.train.role, ROLES)
    _check_data(cfg)
    if cfg.train.role == "teacher":
        _check_model(cfg.teacher, "teacher")
    else:
        _check_model(cfg.student, "student")
        _check_distill(cfg)
        if cfg.distill.methods:
            _check_model(cfg.teacher, "teacher")
            if "dfd" in cfg.distill.methods:
                _check_region(cfg)
            if require_teacher and not (cfg.teacher.checkpoint or cfg.teacher.weights):
                _fail(
                    "teacher.checkpoint",
                    cfg.teacher.checkpoint,
                    f"distill={'+'.join(cfg.distill.methods)} needs a trained teacher: set teacher.checkpoint=PATH "
                    "(the checkpoints/last.pth of a train=teacher run) or teacher.weights",
                )
    _check_schedule(cfg)
    _check_trainer(cfg)
    if cfg.experiment.row is not None and not str(cfg.experiment.row):
        _fail("experiment.row", cfg.experiment.row, "expected a row id")
