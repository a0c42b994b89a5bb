"""Setting up a process for training or evaluation: distributed group, device, precision, data."""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from dfd.data import build_datasets
from dfd.models import Family

from .config import Config
from .dist import DistInfo, init_distributed, resolve_device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``trainer.amp``: auto = bf16 on CUDA and full precision on the CPU."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def setup_process(cfg: Config) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (if any), pick the device, seed this process."""
    wants_cuda = cfg.trainer.device.startswith("cuda") or (cfg.trainer.device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if wants_cuda else "cpu")
    device = resolve_device(cfg.trainer.device, info)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    return info, device


def datasets(cfg: Config, family: Family) -> tuple[Any, Any]:
    """The train and val datasets of ``cfg.data``, with the targets ``family`` trains on."""
    d = cfg.data
    return build_datasets(
        d.kind, d.root, min_size=d.min_size, max_size=d.max_size, flip_prob=d.flip_prob, rounding=d.rounding,
        filter_empty_train=d.filter_empty_train, with_masks="masks" in family.target_keys,
        synthetic=dataclasses.asdict(d.synthetic), verify_images=d.verify_images,
    )
