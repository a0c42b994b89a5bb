"""Converting mmdetection model-zoo checkpoints into checkpoints of this repository's models.

The result carries what a checkpoint written by training carries (the model's family, options,
classes and COCO category ids, the config of a ``train=teacher`` run, finished), so it loads as
``teacher.checkpoint=OUT`` and ``scripts/evaluate.py checkpoint=OUT`` evaluates it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from dfd.errors import ComponentNotImplemented
from dfd.models import build_model, without_pretrained
from dfd.models.mmdet import check_against, coco_labels, read_mmdet
from dfd.rundir import config_digest

from .checkpoint import atomic_save, model_record
from .config import Config, check_model, to_plain
from .runinfo import code_version, now


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_mmdet_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, cfg: Config) -> dict[str, Any]:
    """Convert the mmdetection checkpoint ``src`` into the model ``cfg.teacher`` describes; write ``dst``.

    Every weight of ``src`` must find its place and every weight of the model must be filled
    (errors name the first key that does not); the classes must be mmdetection's 80 COCO classes.
    """
    options = cfg.teacher
    family = check_model(options, "teacher")
    if family.from_mmdet is None:
        raise ComponentNotImplemented(f"teacher.family={family.name!r}: converting mmdetection checkpoints is not written yet")
    state, classes = read_mmdet(src, "IN")
    labels = coco_labels(classes, "IN")
    model = build_model(without_pretrained(options), len(labels), "teacher")
    converted = family.from_mmdet(state, options)
    check_against(converted, model.state_dict(), "IN")
    model.load_state_dict(converted)
    plain = to_plain(cfg)
    record = {
        "model": converted, "ema": None, "distill": None, "role": "teacher", "finished": True, "iteration": 0, "total_iters": 0,
        **model_record(family.name, options, len(labels), labels),
        "config": plain, "config_digest": config_digest(plain), "code_version": code_version(), "saved_at": now(),
        "converted_from": {"path": str(Path(src).resolve()), "sha256": _sha256(src), "format": "mmdetection 2.x"},
    }
    atomic_save(record, dst)
    return record
