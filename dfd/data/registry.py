"""The registry of datasets a config's ``data.kind`` may name, and ``build_datasets``.

``DATASETS`` is the single list of kinds: the config check validates ``data.kind`` against it,
and ``build_datasets`` builds the (train, val) pair through the entry's builder.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfd.errors import ComponentNotImplemented

from .coco import CocoDetection, DataError
from .synthetic import _params, ensure_synthetic_coco
from .transforms import ROUNDINGS, build_transforms

Builder = Callable[..., tuple[CocoDetection, CocoDetection]]


@dataclass(frozen=True)
class DatasetEntry:
    """One ``data.kind``.

    ``needs_root``: whether ``data.root`` must name an existing directory (``synthetic`` caches
    its generated files in a directory of its own when ``data.root`` is unset). ``reason``: for a
    kind that is not implemented, one line saying what is missing. ``builder(root, **options)``
    returns ``(train, val)``; ``None`` when not implemented.
    """

    name: str
    summary: str
    implemented: bool = True
    needs_root: bool = True
    reason: str = ""
    builder: Builder | None = None


def synthetic_cache_root(synthetic: Mapping[str, Any] | None = None) -> Path:
    """Default directory of the synthetic set: ``$DFD_CACHE/synthetic_coco/<digest of its parameters>``
    (``$DFD_CACHE`` defaults to ``.cache``); one directory per generator setting."""
    params = _params(**_synthetic_params(synthetic))
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(os.environ.get("DFD_CACHE", ".cache")) / "synthetic_coco" / tag


def _synthetic_params(synthetic: Mapping[str, Any] | None) -> dict[str, Any]:
    """The generator parameters with defaults filled in; DataError naming ``data.synthetic`` on unknown keys."""
    signature = inspect.signature(ensure_synthetic_coco).parameters
    allowed = [p for p in signature if p != "root"]
    params = dict(synthetic or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DataError(f"data.synthetic: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return {name: params.get(name, signature[name].default) for name in allowed}


def _coco_pair(
    root: str | Path,
    *,
    min_size: int,
    max_size: int,
    flip_prob: float,
    rounding: str,
    filter_empty_train: bool,
    with_masks: bool,
    verify_images: bool = False,
) -> tuple[CocoDetection, CocoDetection]:
    """train2017 (flip, empty images dropped if asked) and val2017 (no flip, every image); ``verify_images``
    decodes every image file of both first."""
    train = CocoDetection(
        root,
        "train",
        build_transforms(True, min_size=min_size, max_size=max_size, flip_prob=flip_prob, rounding=rounding),
        filter_empty=filter_empty_train,
        with_masks=with_masks,
        verify=verify_images,
    )
    val = CocoDetection(
        root,
        "val",
        build_transforms(False, min_size=min_size, max_size=max_size, rounding=rounding),
        with_masks=with_masks,
        verify=verify_images,
    )
    return train, val


def _build_coco(root: str | Path | None, *, synthetic: Mapping[str, Any] | None = None, **options: Any):
    """Real COCO 2017 at ``data.root`` (``synthetic`` is ignored)."""
    if root is None or str(root) == "":
        raise DataError("data.root: not set; give the directory of the coco dataset (data.root=PATH)")
    return _coco_pair(root, **options)


def _build_synthetic(root: str | Path | None, *, synthetic: Mapping[str, Any] | None = None, **options: Any):
    """The synthetic set, generated on first use into ``root`` (default :func:`synthetic_cache_root`)."""
    params = _synthetic_params(synthetic)
    if root is None or str(root) == "":
        root = synthetic_cache_root(params)
    return _coco_pair(ensure_synthetic_coco(root, **params), **options)


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            "synthetic",
            "shapes in the COCO 2017 layout, generated on first use (no download)",
            needs_root=False,
            builder=_build_synthetic,
        ),
        DatasetEntry("coco", "COCO 2017 detection / instance segmentation at data.root", builder=_build_coco),
        DatasetEntry(
            "coco_keypoints",
            "COCO 2017 person keypoints (Table 7, pose estimation)",
            implemented=False,
            reason="no keypoint dataset, top-down person crops (256x192) or heatmap targets yet",
        ),
        DatasetEntry(
            "cityscapes",
            "Cityscapes semantic segmentation (Table 7, PSPNet)",
            implemented=False,
            reason="no Cityscapes loader, 512x512 crops or label-map targets yet",
        ),
    )
}


def data_kinds(*, implemented_only: bool = False) -> list[str]:
    """The registered ``data.kind`` names (only the implemented ones if asked)."""
    return [name for name, entry in DATASETS.items() if entry.implemented or not implemented_only]


def dataset_entry(kind: str) -> DatasetEntry:
    """The entry of ``kind``: DataError naming ``data.kind`` when unknown, ComponentNotImplemented when not built yet."""
    entry = DATASETS.get(kind)
    if entry is None:
        raise DataError(f"data.kind: unknown dataset kind {kind!r}; registered: {', '.join(DATASETS)}")
    if not entry.implemented or entry.builder is None:
        raise ComponentNotImplemented(f"data.kind={kind!r} is not implemented yet: {entry.reason}")
    return entry


def build_datasets(
    kind: str,
    root: str | Path | None,
    *,
    min_size: int,
    max_size: int,
    flip_prob: float = 0.5,
    rounding: str = "round",
    filter_empty_train: bool = True,
    with_masks: bool = False,
    synthetic: Mapping[str, Any] | None = None,
    verify_images: bool = False,
) -> tuple[CocoDetection, CocoDetection]:
    """``(train, val)`` datasets of ``data.kind`` with the detection transforms of the ``data`` group.

    ``root`` is ``data.root`` (optional for ``synthetic``); ``synthetic`` the generator parameters
    (``data.synthetic``, used by the synthetic kind only); ``with_masks`` adds instance masks to
    the targets (Mask R-CNN families); ``rounding`` picks the resize's size rule (see
    :func:`~dfd.data.fit_size`); ``verify_images`` decodes every image file before returning
    (``data.verify_images``: a corrupt file is named before training starts, not at its first batch).
    """
    entry = dataset_entry(kind)
    if rounding not in ROUNDINGS:
        raise DataError(f"data.rounding: {rounding!r} is not one of {', '.join(ROUNDINGS)}")
    assert entry.builder is not None
    return entry.builder(
        root,
        synthetic=synthetic,
        min_size=min_size,
        max_size=max_size,
        flip_prob=flip_prob,
        rounding=rounding,
        filter_empty_train=filter_empty_train,
        with_masks=with_masks,
        verify_images=verify_images,
    )
