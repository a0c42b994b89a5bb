"""The distilled student alone, for use elsewhere: its weights without the teacher or the distillation modules.

``export_student(CHECKPOINT, OUT)`` writes ``OUT``, a plain state dict of the evaluated weights (the EMA's
when the run kept one), and ``OUT.json``, what the weights are: family, options, classes and their COCO
ids. The state dict uses torchvision's names, so torchvision's own builder of the same model loads it
(e.g. a Faster R-CNN R50 student: ``torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None, num_classes=K + 1)``); ``dfd.models.build_model`` rebuilds it from ``OUT.json``.
torchvision's model predicts as ours when the student was built with torchvision's option values
(Faster R-CNN: ``exact_anchors=false roi_aligned=false roi_sampling_ratio=2``; tests/test_export.py); with
mmdetection's (the defaults) the weights load the same, but its anchors and RoIAlign differ slightly from ours.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dfd.models import read_checkpoint
from dfd.rundir import atomic_write_json

from .checkpoint import atomic_save, evaluated_state


def with_batch_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counter a BatchNorm layer has and a frozen one lacks (0), so that
    a builder with plain BatchNorm loads the weights strictly; frozen BatchNorm ignores the counter."""
    out = dict(state)
    for name in state:
        if name.endswith(".running_mean"):
            out.setdefault(name[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def export_student(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the weights a run evaluated (``out``) and what they are (``out`` + ``.json``)."""
    ckpt = read_checkpoint(checkpoint, "checkpoint")
    state = with_batch_counters(evaluated_state(ckpt, "checkpoint", repr(str(checkpoint))))
    meta = {
        "family": ckpt.get("family"),
        "model_config": ckpt.get("model_config"),
        "num_classes": ckpt.get("num_classes"),
        "label_to_category": ckpt.get("label_to_category"),
        "source": str(Path(checkpoint).resolve()),
        "config_digest": ckpt.get("config_digest"),
    }
    atomic_save(state, out)
    atomic_write_json(json.loads(json.dumps(meta, default=str)), f"{out}.json")
    return meta
