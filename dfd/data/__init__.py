"""Datasets (COCO layout, real or synthetic), detection transforms and loaders."""
from __future__ import annotations

from .coco import CocoDetection, DataError
from .loader import DATASET_KINDS, build_detection_datasets, build_loader, collate
from .synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
from .synthetic import ensure_synthetic_coco, generate_synthetic_coco
from .transforms import Compose, RandomHorizontalFlip, Resize, ToTensor, build_transforms, resize_scale

__all__ = [
    "DATASET_KINDS",
    "SYNTHETIC_CATEGORIES",
    "CocoDetection",
    "Compose",
    "DataError",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "build_detection_datasets",
    "build_loader",
    "build_transforms",
    "collate",
    "ensure_synthetic_coco",
    "generate_synthetic_coco",
    "resize_scale",
]
