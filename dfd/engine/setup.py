"""Setting up a process for training or evaluation: distributed group, device, precision, data."""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from dfd.data import DataNeeds, build_datasets
from dfd.models import Family

from .config import Config
from .cpu_malloc import set_cpu_malloc
from .dist import DistInfo, init_distributed, resolve_device


def amp_dtype(mode: str, device: torch.device, family: Family) -> torch.dtype | None:
    """``trainer.amp``: auto = on CUDA the precision of ``family``'s public recipe (:attr:`Family.protocol_amp`:
    fp32 for the OpenMMLab families, fp16 for YOLOv6), full precision on the CPU; bf16 is asked for by name."""
    if mode == "auto":
        mode = family.protocol_amp if device.type == "cuda" else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def memory_format(cfg: Config) -> torch.memory_format:
    """``trainer.channels_last``: the layout of the models' 4-D weights (convolutions then produce that layout)."""
    return torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format


def setup_process(cfg: Config) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (if any), pick the device, seed this process."""
    wants_cuda = cfg.trainer.device.startswith("cuda") or (cfg.trainer.device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if wants_cuda else "cpu")
    device = resolve_device(cfg.trainer.device, info)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    if device.type == "cpu":
        set_cpu_malloc(cfg.trainer.cpu_malloc)
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    return info, device


LOADER_KEYS = ("kind", "root", "batch_size", "eval_batch_size", "num_workers", "group_by_aspect")
"""``data`` values that are the loader's, not the dataset builder's."""


def datasets(cfg: Config, family: Family) -> tuple[Any, Any]:
    """The train and val datasets of ``cfg.data``, with the targets ``family`` trains on."""
    options = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in LOADER_KEYS}
    needs = DataNeeds(pipeline=family.pipeline, target_keys=tuple(family.target_keys))
    return build_datasets(cfg.data.kind, cfg.data.root, needs=needs, family=f"the {family.name} family", **options)
