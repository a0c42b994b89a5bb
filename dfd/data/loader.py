"""Batching and dataset construction from the ``data`` config group."""
from __future__ import annotations

import inspect
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .coco import CocoDetection, DataError
from .synthetic import ensure_synthetic_coco
from .transforms import build_transforms

DATASET_KINDS = ("synthetic", "coco")


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists: detection images differ in size."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy / random from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader with ``collate`` and a seeded generator; a DistributedSampler when ``distributed``.

    With ``distributed`` the caller must call ``loader.sampler.set_epoch(epoch)`` every epoch.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=int(seed), drop_last=drop_last) if distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )


def build_detection_datasets(
    kind: str,
    root: str | Path | None,
    *,
    min_size: int,
    max_size: int,
    flip_prob: float = 0.5,
    filter_empty_train: bool = True,
    synthetic: Mapping[str, Any] | None = None,
) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) datasets. ``kind="synthetic"`` generates (or reuses) the synthetic set at ``root``."""
    if kind not in DATASET_KINDS:
        raise DataError(f"data.kind: unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    if root is None or str(root) == "":
        raise DataError(f"data.root: not set; give the directory of the {kind} dataset (data.root=PATH)")
    if kind == "synthetic":
        params = dict(synthetic or {})
        allowed = [p for p in inspect.signature(ensure_synthetic_coco).parameters if p != "root"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise DataError(f"data.synthetic: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        root = ensure_synthetic_coco(root, **params)
    train = CocoDetection(
        root,
        "train",
        build_transforms(True, min_size=min_size, max_size=max_size, flip_prob=flip_prob),
        filter_empty=filter_empty_train,
    )
    val = CocoDetection(root, "val", build_transforms(False, min_size=min_size, max_size=max_size))
    return train, val
