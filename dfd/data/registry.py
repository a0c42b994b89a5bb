"""The registry of datasets a config's ``data.kind`` may name, and ``build_datasets``.

``DATASETS`` is the single list of kinds: the config check validates ``data.kind`` against it,
and ``build_datasets`` builds the (train, val) pair through the entry's builder.

A kind serves one or more *pipelines* (``detection``: resize and flip; ``yolo``: letterbox, mosaic,
mixup; ``topdown``: person crops and heatmaps; ``segmentation``: label maps and crops). The model
family says which pipeline it trains on and which target fields it needs (:class:`DataNeeds`); a
kind that does not serve the family's pipeline is refused naming both. A synthetic kind names its
``twin``: the real dataset of the same layout that ``data_root`` swaps it for.
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
from .yolo import yolo_datasets

Builder = Callable[..., tuple[Any, Any]]


@dataclass(frozen=True)
class DataNeeds:
    """What a model family asks of the data: its ``pipeline`` and the ``target_keys`` it trains on
    (``masks`` asks a detection kind to decode instance masks)."""

    pipeline: str = "detection"
    target_keys: tuple[str, ...] = ("boxes", "labels")


@dataclass(frozen=True)
class DatasetEntry:
    """One ``data.kind``.

    ``needs_root``: whether ``data.root`` must name an existing directory (``synthetic`` caches
    its generated files in a directory of its own when ``data.root`` is unset). ``reason``: for a
    kind that is not implemented, one line saying what is missing. ``builder(root, needs, **options)``
    returns ``(train, val)``; ``None`` when not implemented. ``options`` are the ``data`` group's
    values (``min_size``, ``synthetic``, ``keypoints``, ...): a builder takes the ones it uses by name.
    ``pipelines``: the pipelines it serves. ``twin``: for a synthetic kind, the real kind of its layout.
    """

    name: str
    summary: str
    implemented: bool = True
    needs_root: bool = True
    reason: str = ""
    builder: Builder | None = None
    pipelines: tuple[str, ...] = ("detection",)
    twin: str | None = None


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
    flip_prob: float = 0.5,
    rounding: str = "round",
    filter_empty_train: bool = True,
    with_masks: bool = False,
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


DETECTION_OPTIONS = ("min_size", "max_size", "flip_prob", "rounding", "filter_empty_train", "verify_images")


def _detection_options(options: Mapping[str, Any], needs: DataNeeds) -> dict[str, Any]:
    return {k: options[k] for k in DETECTION_OPTIONS if k in options} | {"with_masks": "masks" in needs.target_keys}


def _pair(root: str | Path, needs: DataNeeds, options: Mapping[str, Any]):
    """The (train, val) pair of a COCO-layout root for the family's pipeline: ``detection`` or ``yolo`` (``data.yolo``)."""
    if needs.pipeline == "yolo":
        return yolo_datasets(root, **options)
    return _coco_pair(root, **_detection_options(options, needs))


def _build_coco(root: str | Path | None, needs: DataNeeds, **options: Any):
    """Real COCO 2017 at ``data.root``."""
    if root is None or str(root) == "":
        raise DataError("data.root: not set; give the directory of the coco dataset (data.root=PATH)")
    return _pair(root, needs, options)


def _build_synthetic(root: str | Path | None, needs: DataNeeds, **options: Any):
    """The synthetic set, generated on first use into ``root`` (default :func:`synthetic_cache_root`)."""
    params = _synthetic_params(options.get("synthetic"))
    if root is None or str(root) == "":
        root = synthetic_cache_root(params)
    return _pair(ensure_synthetic_coco(root, **params), needs, options)


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            "synthetic",
            "shapes in the COCO 2017 layout, generated on first use (no download)",
            needs_root=False,
            builder=_build_synthetic,
            pipelines=("detection", "yolo"),
            twin="coco",
        ),
        DatasetEntry("coco", "COCO 2017 detection / instance segmentation at data.root", builder=_build_coco,
                     pipelines=("detection", "yolo")),
    )
}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add a ``data.kind`` (a data module calls it once at import: ``dfd/data/cityscapes.py``, ...)."""
    if entry.name in DATASETS:
        raise ValueError(f"data.kind {entry.name!r} is registered twice")
    DATASETS[entry.name] = entry
    return entry


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


def check_pipeline(kind: str, needs: DataNeeds, family: str = "the model") -> DatasetEntry:
    """The entry of ``kind``, refused (naming ``data.kind`` and the family) when it does not serve ``needs.pipeline``."""
    entry = dataset_entry(kind)
    if needs.pipeline not in entry.pipelines:
        serving = [name for name, e in DATASETS.items() if needs.pipeline in e.pipelines]
        raise DataError(f"data.kind={kind!r} serves the {'/'.join(entry.pipelines)} pipeline(s), but {family} trains on "
                        f"the {needs.pipeline!r} pipeline; use data.kind among: {', '.join(serving) or 'none yet'}")
    return entry


def build_datasets(kind: str, root: str | Path | None, *, needs: DataNeeds = DataNeeds(), family: str = "the model",
                   **options: Any) -> tuple[Any, Any]:
    """``(train, val)`` datasets of ``data.kind`` for a family that needs ``needs``.

    ``root`` is ``data.root`` (optional for synthetic kinds); ``options`` the ``data`` group's values, e.g.
    for the detection kinds ``min_size``, ``max_size``, ``flip_prob``, ``rounding`` (see
    :func:`~dfd.data.fit_size`), ``filter_empty_train``, ``verify_images`` (decode every image file before
    returning: a corrupt file is named before training starts) and ``synthetic`` (the generator's parameters).
    """
    entry = check_pipeline(kind, needs, family)
    rounding = options.get("rounding", "round")
    if rounding not in ROUNDINGS:
        raise DataError(f"data.rounding: {rounding!r} is not one of {', '.join(ROUNDINGS)}")
    assert entry.builder is not None
    return entry.builder(root, needs, **options)
