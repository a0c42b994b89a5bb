"""Converting OpenMMLab model-zoo checkpoints into checkpoints of this repository's models.

One converter for every task: mmdetection 2.x detectors (``detection``, ``instance``), mmpose 0.x
top-down pose models (``keypoints``) and mmsegmentation 0.x segmentors (``semantic``). The family's
``from_mmdet`` renames the weights; the family's task says which library the file comes from and
which classes it predicts (:data:`SOURCES`).

The result carries what a checkpoint written by training carries (the model's family, options,
classes and their dataset category ids, the config of a ``train=teacher`` run, finished), so it
loads as ``teacher.checkpoint=OUT`` and ``scripts/evaluate.py checkpoint=OUT`` evaluates it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

from dfd.data.cityscapes import CLASSES as CITYSCAPES_CLASSES
from dfd.data.cityscapes import TRAIN_ID_TO_LABEL_ID
from dfd.errors import ComponentNotImplemented
from dfd.models import WeightsError, build_model, without_pretrained
from dfd.models.mmdet import COCO_CLASSES, check_against, coco_labels, read_openmmlab
from dfd.rundir import config_digest

from .checkpoint import atomic_save, model_record
from .config import Config, check_model, to_plain
from .runinfo import code_version, now

COCO_PERSON_ID = 1  # COCO's person category: mmpose's top-down models predict only it

Classes = Optional[Sequence[str]]


def _detection_labels(classes: Classes, key: str) -> dict[int, int]:
    return coco_labels(classes or COCO_CLASSES, key)


def _person_labels(classes: Classes, key: str) -> dict[int, int]:
    """mmpose's top-down checkpoints carry no classes (or ``("person",)``): one class, COCO's person."""
    if classes and tuple(classes) != ("person",):
        raise WeightsError(f"{key}: meta.CLASSES is {list(classes)[:3]}..., not mmpose's one person class")
    return {1: COCO_PERSON_ID}


def _cityscapes_labels(classes: Classes, key: str) -> dict[int, int]:
    """mmsegmentation's Cityscapes classes are the 19 train ids in order: label i is train id i."""
    if classes and tuple(classes) != CITYSCAPES_CLASSES:
        raise WeightsError(f"{key}: its {len(classes)} classes are not Cityscapes' 19 train ids in order "
                           f"(first: {list(classes)[:3]})")
    return dict(enumerate(TRAIN_ID_TO_LABEL_ID))


class Source(NamedTuple):
    """Where a task's checkpoints come from: the library and version (``fmt``), the checkpoint's classes as
    ``{label: dataset category id}`` (``labels``), and the conf/data option of the converted run's config."""

    fmt: str
    labels: Callable[[Classes, str], dict[int, int]]
    data: str


SOURCES: dict[str, Source] = {
    "detection": Source("mmdetection 2.x", _detection_labels, "coco"),
    "instance": Source("mmdetection 2.x", _detection_labels, "coco"),
    "keypoints": Source("mmpose 0.x", _person_labels, "coco_keypoints"),
    "semantic": Source("mmsegmentation 0.x", _cityscapes_labels, "cityscapes"),
}


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_of(family: Any) -> Source:
    if family.from_mmdet is None:
        raise ComponentNotImplemented(f"teacher.family={family.name!r}: converting OpenMMLab checkpoints is not written yet")
    if family.task not in SOURCES:
        raise ComponentNotImplemented(f"teacher.family={family.name!r}: no OpenMMLab source for its task {family.task!r}")
    return SOURCES[family.task]


def convert_mmdet_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, cfg: Config) -> dict[str, Any]:
    """Convert the OpenMMLab checkpoint ``src`` into the model ``cfg.teacher`` describes; write ``dst``.

    Every weight of ``src`` must find its place and every weight of the model must be filled
    (errors name the first key that does not); the classes must be the task's (:data:`SOURCES`):
    mmdetection's 80 COCO classes, mmpose's person, mmsegmentation's 19 Cityscapes classes.
    """
    options = cfg.teacher
    family = check_model(options, "teacher")
    fmt, labels_of, _ = source_of(family)
    library = fmt.split()[0]
    state, classes = read_openmmlab(src, "IN")
    labels = labels_of(classes, "IN")
    model = build_model(without_pretrained(options), len(labels), "teacher")
    converted = family.from_mmdet(state, options)
    check_against(converted, model.state_dict(), "IN", library)
    model.load_state_dict(converted)
    plain = to_plain(cfg)
    record = {
        "model": converted, "ema": None, "distill": None, "role": "teacher", "finished": True, "iteration": 0, "total_iters": 0,
        **model_record(family.name, options, len(labels), labels),
        "config": plain, "config_digest": config_digest(plain), "code_version": code_version(), "saved_at": now(),
        "converted_from": {"path": str(Path(src).resolve()), "sha256": _sha256(src), "format": fmt},
    }
    atomic_save(record, dst)
    return record
