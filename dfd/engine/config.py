"""Structured configuration: the schema of every Hydra group, value checks, and parsing.

OmegaConf checks types and unknown keys when the groups are composed onto these
dataclasses (a model node is typed by its family's options, see ``conf/teacher/*.yaml``);
:func:`load_config` checks values (choices, ranges, files) once, before any model is built,
raising :class:`ConfigError` with the key and the value at fault, and returns the config as
typed objects that the engine uses from then on.
"""
from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dfd.data import DATASETS, ROUNDINGS, DataError, DataNeeds, check_pipeline
from dfd.data.cityscapes import SegmentationDataOptions
from dfd.data.keypoints import KeypointsDataOptions
from dfd.data.yolo import YoloDataOptions
from dfd.distill import (
    CONSTRAINTS,
    METHODS,
    TRANSFORM_STRUCTURES,
    CWDParams,
    DFDParams,
    FGDParams,
    MGDParams,
    MSEParams,
    PKDParams,
    RegionParams,
    Threshold,
    parse_threshold,
)
from dfd.errors import ComponentNotImplemented
from dfd.models import FAMILIES, Family, ModelOptions, OptionError, get_family, options_from_dict

from .cpu_malloc import CPU_MALLOC_MODES
from .optim import OPTIMIZERS, POLICIES

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ROLES = ("student", "teacher")
AMP_MODES = ("auto", "bf16", "fp16", "off")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the value."""


@dataclass
class DistillConfig:
    """Which methods distil which maps. Each method's parameters are its loss's ``Params`` dataclass;
    DFD's region constraints and threshold are the ``region`` and ``threshold`` groups."""

    methods: List[str] = field(default_factory=list)  # [] = no distillation; several = their sum
    levels: Optional[List[str]] = None  # None: the student family's default levels
    inherit: bool = False  # initialise the student's neck and head from the teacher where shapes match
    # None: every method's weights as configured. r: before the first step each method gets one gain so that its
    # terms, summed, are r x the task loss on the first calibration_batches batches (dfd/engine/calibrate.py)
    start_ratio: Optional[float] = None
    calibration_batches: int = 4
    dfd: DFDParams = field(default_factory=DFDParams)
    mse: MSEParams = field(default_factory=MSEParams)
    fgd: FGDParams = field(default_factory=FGDParams)
    mgd: MGDParams = field(default_factory=MGDParams)
    pkd: PKDParams = field(default_factory=PKDParams)
    cwd: CWDParams = field(default_factory=CWDParams)


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
    kind: str = "synthetic"  # a name of dfd.data.DATASETS
    root: Optional[str] = None  # synthetic: its cache dir (default $DFD_CACHE/synthetic_coco/<digest>)
    min_size: int = 800
    max_size: int = 1333
    rounding: str = "round"  # output size of the resize: round (mmcv) | floor (torchvision)
    flip_prob: float = 0.5
    batch_size: int = 2  # per process
    eval_batch_size: int = 2
    num_workers: int = 4
    filter_empty_train: bool = True
    group_by_aspect: bool = True  # batches of one aspect-ratio group (mmdetection's GroupSampler)
    verify_images: bool = False  # decode every image file before training starts (a corrupt one is named)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # The options of one pipeline, set by the data options that serve it (conf/data/*_yolo.yaml, ...): null
    # elsewhere, and then left out of the config digest (dfd/rundir.py PIPELINE_KEYS); null for a run of that
    # pipeline means the defaults of its dataclass.
    yolo: Optional[YoloDataOptions] = None  # the yolo pipeline (YOLOv6): letterbox, mosaic, ...
    keypoints: Optional[KeypointsDataOptions] = None  # the topdown pipeline (pose): crops, heatmaps, ...
    segmentation: Optional[SegmentationDataOptions] = None  # the segmentation pipeline (PSPNet): crops, resizing, ...


@dataclass
class ScheduleConfig:
    optimizer: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.01  # for a total batch of base_batch images
    base_batch: Optional[int] = 16  # lr is scaled by (processes x data.batch_size) / base_batch; null: never scaled
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False  # no weight decay on normalisation layers and biases
    no_decay_keys: List[str] = field(default_factory=list)  # parameter-name substrings without decay
    policy: str = "step"  # step | cosine | poly, after a linear warm-up
    epochs: int = 12
    steps: List[int] = field(default_factory=lambda: [8, 11])  # step: epochs after which lr *= gamma
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine, poly: the floor, as a fraction of lr
    power: float = 1.0  # poly
    teacher_epochs: Optional[int] = None  # train=teacher: epochs (steps scaled alike); None = epochs
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: Optional[float] = None  # max gradient norm; the distill group sets each method's
    ema_decay: Optional[float] = None  # an EMA of the weights, evaluated in their place; None = off
    ema_ramp: Optional[float] = 2000.0  # iterations over which the EMA decay ramps up (YOLOv6)


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto = the student family's public recipe on CUDA (fp32; YOLOv6 fp16), off on CPU; or bf16
    max_iters: Optional[int] = None  # cap on the run's iterations
    log_interval: int = 20
    checkpoint_interval: int = 1000  # iterations between periodic checkpoints
    evaluate: bool = True
    overwrite: bool = False  # a finished run in the same directory is redone only when true
    progress: bool = True
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    sync_bn: bool = True  # BatchNorm -> SyncBatchNorm under torchrun on CUDA
    objective: Optional[str] = None  # the metric returned to a Hydra sweeper; None = the task's primary one
    compile_losses: bool = False  # torch.compile the distillation losses (a GPU speed option: docs/choices.md)
    cpu_malloc: str = "reuse"  # reuse | default: freed host memory kept for the next step (dfd/engine/cpu_malloc.py)
    channels_last: bool = False  # weights, and so activations, channels-last (a speed option: docs/choices.md)


@dataclass
class LoggerConfig:
    kind: str = "none"
    project: str = "dfd"
    entity: Optional[str] = None
    mode: str = "offline"
    tags: List[str] = field(default_factory=list)
    init_timeout: float = 60.0  # seconds W&B online may take to start before the run logs offline instead


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
    teacher: Any = None  # typed by its family's options (conf/teacher/*.yaml)
    student: Any = None  # likewise (conf/student/*.yaml)
    distill: DistillConfig = field(default_factory=DistillConfig)
    region: RegionParams = field(default_factory=RegionParams)
    threshold: Threshold = field(default_factory=Threshold)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    seed: int = 0
    runs_root: str = "runs"

    @property
    def role(self) -> str:
        """``teacher`` or ``student``: the model this run trains."""
        return self.train.role

    @property
    def model(self) -> Any:
        """The options of the model this run trains."""
        return self.teacher if self.role == "teacher" else self.student

    @property
    def distilling(self) -> bool:
        return self.role == "student" and bool(self.distill.methods)


RUN_ID_RESOLVER = "run_id"


def _run_id() -> str:
    return secrets.token_hex(3)


def register_configs() -> None:
    """Register the schema as ``config_schema`` and every family's options as ``family/<name>``
    (``family/planned``: the options every family has, for model configs of families not built yet),
    and the ``${run_id:}`` resolver: a short random id, the same wherever one config uses it, so that
    two runs started in the same second get different default directories."""
    if not OmegaConf.has_resolver(RUN_ID_RESOLVER):
        OmegaConf.register_new_resolver(RUN_ID_RESOLVER, _run_id, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="family", name="planned", node=ModelOptions)
    for family in FAMILIES.values():
        cs.store(group="family", name=family.name, node=family.options)


def compose_config(overrides: Sequence[str], *, return_hydra_config: bool = False) -> DictConfig:
    """The config ``scripts/train.py`` would get for these command-line overrides (without running Hydra's app)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def to_plain(cfg: Config | DictConfig) -> dict[str, Any]:
    """The config as plain, resolved dicts and lists (for checkpoints, digests and W&B)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_from_plain(plain: dict[str, Any]) -> Config:
    """A config written as plain values (a checkpoint's ``config``) as typed objects again."""
    rest = {k: v for k, v in plain.items() if k not in ROLES}
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), rest))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or 'config'}: {err.msg}") from err
    for role in ROLES:
        node = plain.get(role)
        if isinstance(node, dict) and node.get("family") in FAMILIES:
            try:
                node = options_from_dict(node, role)
            except OptionError as err:
                raise ConfigError(err.qualified(role)) from err
        setattr(cfg, role, node)
    return cfg


# ---------------------------------------------------------------------------- checks


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {expected}")


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        _fail(key, value, f"expected one of {', '.join(choices)}")


def _non_negative(key: str, value: Any) -> None:
    if value is None or value < 0:
        _fail(key, value, "expected a non-negative number")


def _positive(key: str, value: Any) -> None:
    if value is None or value <= 0:
        _fail(key, value, "expected a positive number")


def check_model(options: Any, key: str) -> Family:
    """The family of a model node, after checking its options; errors name ``key``."""
    name = options.get("family") if isinstance(options, dict) else getattr(options, "family", None)
    if not name:
        _fail(f"{key}.family", name, f"choose a model: {key}=<option of conf/{key}/>")
    family = get_family(name, key)
    if type(options) is not family.options:
        _fail(f"{key}.family", name, f"the options of {key} are {type(options).__name__}; "
              f"choose a {name} model with {key}=<option> instead of setting {key}.family")
    try:
        options.check()
    except OptionError as err:
        raise ConfigError(err.qualified(key)) from err
    return family


def _check_levels(cfg: Config, student: Family, teacher: Family) -> None:
    d = cfg.distill
    available = [lvl for lvl in student.levels if lvl in teacher.levels]
    for key, levels in [("distill.levels", d.levels)] + [(f"distill.{m}.levels", getattr(d, m).levels) for m in d.methods]:
        if levels is None:
            continue
        if not levels:
            _fail(key, list(levels), "expected at least one level")
        for i, lvl in enumerate(levels):
            _choice(f"{key}[{i}]", lvl, available)


def _check_distill(cfg: Config, student: Family) -> None:
    d = cfg.distill
    for i, m in enumerate(d.methods):
        _choice(f"distill.methods[{i}]", m, list(METHODS))
    if len(set(d.methods)) != len(d.methods):
        _fail("distill.methods", list(d.methods), "a method is listed twice")
    _positive("distill.dfd.temperature", d.dfd.temperature)
    _choice("distill.dfd.transform", d.dfd.transform, TRANSFORM_STRUCTURES)
    for key in ("mse.weight", "fgd.alpha_fgd", "fgd.beta_fgd", "fgd.gamma_fgd", "fgd.lambda_fgd", "mgd.alpha", "pkd.weight", "cwd.weight"):
        method, name = key.split(".")
        _non_negative(f"distill.{key}", getattr(getattr(d, method), name))
    _positive("distill.fgd.temperature", d.fgd.temperature)
    _positive("distill.cwd.tau", d.cwd.tau)
    if not 0 <= d.mgd.lambda_mgd < 1:
        _fail("distill.mgd.lambda_mgd", d.mgd.lambda_mgd, "expected a mask ratio in [0, 1)")
    if d.start_ratio is not None:
        _positive("distill.start_ratio", d.start_ratio)
    if d.calibration_batches < 1:
        _fail("distill.calibration_batches", d.calibration_batches, "expected at least one batch")


def _check_region(cfg: Config) -> None:
    _choice("region.hd", cfg.region.hd, CONSTRAINTS)
    _choice("region.ld", cfg.region.ld, CONSTRAINTS)
    _non_negative("region.alpha", cfg.region.alpha)
    _non_negative("region.beta", cfg.region.beta)
    t = cfg.threshold
    try:
        parse_threshold(t)
    except ValueError as err:
        key = "threshold.kind" if t.kind not in ("mean", "median", "quantile", "fixed") else "threshold.value"
        raise ConfigError(f"{key}={getattr(t, key.split('.')[1])!r} is invalid: {err}") from err


def _check_data(cfg: Config) -> None:
    d = cfg.data
    _choice("data.kind", d.kind, list(DATASETS))
    entry = DATASETS[d.kind]
    if not entry.implemented:
        raise ComponentNotImplemented(f"data.kind={d.kind!r} is not implemented yet: {entry.reason}")
    if entry.needs_root:
        if not d.root:
            _fail("data.root", d.root, f"data={d.kind} needs data.root=PATH ({entry.reason or 'its directory'})")
        if not Path(d.root).is_dir():
            _fail("data.root", d.root, "directory does not exist")
    for key in ("min_size", "max_size", "batch_size", "eval_batch_size"):
        _positive(f"data.{key}", getattr(d, key))
    if d.min_size > d.max_size:
        _fail("data.min_size", d.min_size, f"must not exceed data.max_size={d.max_size}")
    _choice("data.rounding", d.rounding, ROUNDINGS)
    if not 0 <= d.flip_prob <= 1:
        _fail("data.flip_prob", d.flip_prob, "expected a probability in [0, 1]")
    _non_negative("data.num_workers", d.num_workers)


def _check_pipeline(cfg: Config, family: Family, key: str) -> None:
    """``data.kind`` serves the data pipeline ``family`` trains on (the error names both)."""
    try:
        check_pipeline(cfg.data.kind, DataNeeds(pipeline=family.pipeline), f"{key}.family={family.name!r}")
    except DataError as err:
        raise ConfigError(str(err)) from err


def _check_schedule(cfg: Config) -> None:
    s = cfg.schedule
    _positive("schedule.epochs", s.epochs)
    if s.teacher_epochs is not None:
        _positive("schedule.teacher_epochs", s.teacher_epochs)
    if list(s.steps) != sorted(s.steps) or any(x <= 0 or x > s.epochs for x in s.steps):
        _fail("schedule.steps", list(s.steps), f"expected increasing epochs in 1..{s.epochs}")
    _choice("schedule.optimizer", s.optimizer, OPTIMIZERS)
    _choice("schedule.policy", s.policy, POLICIES)
    _positive("schedule.lr", s.lr)
    if s.base_batch is not None:
        _positive("schedule.base_batch", s.base_batch)
    for key in ("momentum", "weight_decay", "warmup_iters", "min_lr_ratio", "power"):
        _non_negative(f"schedule.{key}", getattr(s, key))
    if len(s.betas) != 2 or not all(0 <= b < 1 for b in s.betas):
        _fail("schedule.betas", list(s.betas), "expected two numbers in [0, 1)")
    if not 0 < s.gamma <= 1:
        _fail("schedule.gamma", s.gamma, "expected a factor in (0, 1]")
    if not 0 < s.warmup_ratio <= 1:
        _fail("schedule.warmup_ratio", s.warmup_ratio, "expected a factor in (0, 1]")
    if s.min_lr_ratio > 1:
        _fail("schedule.min_lr_ratio", s.min_lr_ratio, "expected a fraction of lr in [0, 1]")
    if s.clip_grad is not None:
        _positive("schedule.clip_grad", s.clip_grad)
    if s.ema_decay is not None and not 0 < s.ema_decay < 1:
        _fail("schedule.ema_decay", s.ema_decay, "expected a decay in (0, 1), or null for no EMA")
    if s.ema_ramp is not None:
        _positive("schedule.ema_ramp", s.ema_ramp)


def _check_trainer(cfg: Config) -> None:
    t = cfg.trainer
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        _fail("trainer.device", dev, "expected auto, cpu, cuda or cuda:N")
    _choice("trainer.amp", t.amp, AMP_MODES)
    _choice("trainer.cpu_malloc", t.cpu_malloc, CPU_MALLOC_MODES)
    if t.max_iters is not None:
        _positive("trainer.max_iters", t.max_iters)
    _positive("trainer.log_interval", t.log_interval)
    _positive("trainer.checkpoint_interval", t.checkpoint_interval)
    if t.threads is not None:
        _positive("trainer.threads", t.threads)
    _choice("logger.kind", cfg.logger.kind, LOGGERS)
    _choice("logger.mode", cfg.logger.mode, WANDB_MODES)
    _positive("logger.init_timeout", cfg.logger.init_timeout)


def _check_channels_last(cfg: Config) -> None:
    models = [cfg.model] + ([cfg.teacher] if cfg.distilling else [])
    for options in models:
        if not get_family(options.family).channels_last:
            _fail("trainer.channels_last", True, f"not verified for the {options.family} family (the families whose losses and "
                  "gradients were checked equal under it: " + ", ".join(n for n, f in FAMILIES.items() if f.channels_last) + ")")


def _check_teacher_given(cfg: Config) -> None:
    if not (cfg.teacher.checkpoint or cfg.teacher.weights):
        _fail("teacher.checkpoint", cfg.teacher.checkpoint,
              f"distill={'+'.join(cfg.distill.methods)} needs a trained teacher: set teacher.checkpoint=PATH "
              "(the checkpoints/last.pth of a train=teacher run) or teacher.weights")


def check(cfg: Config, require_teacher: bool = True) -> None:
    """Check every value of a parsed config; raise ConfigError or ComponentNotImplemented.

    ``require_teacher=False`` skips the check that a distillation run names its teacher
    (used when planning a table whose teacher is still to be trained).
    """
    _choice("train.role", cfg.role, ROLES)
    _check_data(cfg)
    family = check_model(cfg.model, cfg.role)
    _check_pipeline(cfg, family, cfg.role)
    if cfg.role == "student":
        _check_distill(cfg, family)
        if cfg.distill.methods:
            teacher = check_model(cfg.teacher, "teacher")
            _check_pipeline(cfg, teacher, "teacher")
            _check_levels(cfg, family, teacher)
            if "dfd" in cfg.distill.methods:
                _check_region(cfg)
            if require_teacher:
                _check_teacher_given(cfg)
    _check_schedule(cfg)
    _check_trainer(cfg)
    if cfg.trainer.channels_last:
        _check_channels_last(cfg)
    if cfg.experiment.row is not None and not str(cfg.experiment.row):
        _fail("experiment.row", cfg.experiment.row, "expected a row id")


def load_config(cfg: DictConfig | Config, require_teacher: bool = True) -> Config:
    """The composed config as typed objects (each model node an instance of its family's options), checked."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{err.full_key or 'config'}: {err.msg}") from err
    check(cfg, require_teacher)
    return cfg


# ---------------------------------------------------------------------------- derived values


def distill_levels(cfg: Config) -> list[str]:
    """``distill.levels``, or the student family's default levels."""
    return list(cfg.distill.levels) if cfg.distill.levels is not None else list(get_family(cfg.student.family).default_levels)


def method_params(cfg: Config) -> dict[str, dict[str, Any]]:
    """Keyword parameters of each selected method, as :class:`dfd.distill.FeatureDistillation` takes them.

    DFD's region constraints and threshold come from the ``region`` and ``threshold`` groups.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in cfg.distill.methods:
        params = dataclasses.asdict(getattr(cfg.distill, m))
        if m == "dfd":
            params.update(dataclasses.asdict(cfg.region), threshold=parse_threshold(cfg.threshold))
        out[m] = params
    return out


def effective_lr(schedule: ScheduleConfig, batch_size: int, world_size: int) -> tuple[float, int]:
    """The learning rate a run uses, and its total batch.

    lr_eff = lr · (world_size · batch_size) / base_batch   (mmdetection's ``auto_scale_lr``, linear rule)

    The public configs' lr is for 16 images (8 GPUs × 2): one GPU with 2 images gets an eighth of it.
    """
    total = world_size * batch_size
    if schedule.base_batch is None:
        return schedule.lr, total
    return schedule.lr * total / schedule.base_batch, total
