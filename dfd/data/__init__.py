"""Datasets (COCO layout, real or synthetic), detection transforms, the dataset registry and batching."""
from __future__ import annotations

from .coco import CocoDetection, DataError
from .registry import (
    DATASETS,
    DataNeeds,
    DatasetEntry,
    build_datasets,
    check_pipeline,
    data_kinds,
    dataset_entry,
    register_dataset,
    synthetic_cache_root,
)
from .sampler import EpochBatchSampler, collate
from .synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
from .synthetic import ensure_synthetic_coco, generate_synthetic_coco
from .transforms import ROUNDINGS, RecordSize, ScaleToFit, build_transforms, fit_scale, fit_size

__all__ = [
    "DATASETS",
    "ROUNDINGS",
    "SYNTHETIC_CATEGORIES",
    "CocoDetection",
    "DataError",
    "DataNeeds",
    "DatasetEntry",
    "EpochBatchSampler",
    "RecordSize",
    "ScaleToFit",
    "build_datasets",
    "build_transforms",
    "check_pipeline",
    "collate",
    "data_kinds",
    "dataset_entry",
    "ensure_synthetic_coco",
    "fit_scale",
    "fit_size",
    "generate_synthetic_coco",
    "register_dataset",
    "synthetic_cache_root",
]

# each registers its data kinds: cityscapes, synthetic_cityscapes, coco_keypoints, synthetic_keypoints
from . import cityscapes, keypoints, synthetic_keypoints  # noqa: E402,F401
