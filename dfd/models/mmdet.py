"""Reading OpenMMLab checkpoints (mmdetection 2.x, mmpose 0.x, mmsegmentation 0.x): the model zoos'
teachers, converted to this repository's models.

A family that can take OpenMMLab weights declares ``Family.from_mmdet``: a function from the
checkpoint's ``state_dict`` (and the family's options) to this repository's state dict. This module
holds what those functions share: reading the file, renaming keys by ordered rules that must place
every key, and mmdetection's class order.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .errors import WeightsError
from .weights import read_checkpoint

# mmdetection's CocoDataset classes, in its order (COCO's 80 categories by ascending id), and their ids.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

Rule = tuple[str, str]  # (regular expression on an mmdetection key, replacement)


def read_openmmlab(path: str | os.PathLike, key: str = "checkpoint") -> tuple[dict[str, Tensor], tuple[str, ...] | None]:
    """The ``state_dict`` of an OpenMMLab checkpoint and its class names (``meta.CLASSES``; None if absent)."""
    ckpt = read_checkpoint(path, key)
    state = ckpt.get("state_dict", ckpt)
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{key}: {str(path)!r} holds no OpenMMLab state_dict (keys: {sorted(ckpt)[:8]})")
    classes = (ckpt.get("meta") or {}).get("CLASSES")
    return dict(state), (tuple(classes) if classes else None)


def read_mmdet(path: str | os.PathLike, key: str = "checkpoint") -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """The ``state_dict`` of an mmdetection checkpoint and its class names (``meta.CLASSES``; COCO's if absent)."""
    state, classes = read_openmmlab(path, key)
    return state, classes or COCO_CLASSES


def rename(state: Mapping[str, Tensor], rules: Sequence[Rule], key: str = "checkpoint",
           source: str = "mmdetection") -> dict[str, Tensor]:
    """Every key renamed by the first rule whose pattern matches it all; a key no rule places is an error
    (naming the ``source`` library: mmdetection, mmpose, ...)."""
    out: dict[str, Tensor] = {}
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    for name, value in state.items():
        for pattern, repl in compiled:
            if pattern.fullmatch(name):
                out[pattern.sub(repl, name)] = value
                break
        else:
            raise WeightsError(f"{key}: cannot place the {source} weight {name!r} {tuple(value.shape)} in this model")
    return out


def coco_labels(classes: Sequence[str], key: str = "checkpoint") -> dict[int, int]:
    """``label_to_category`` of a model trained on mmdetection's COCO classes: label c + 1 is COCO_CLASSES[c]."""
    if tuple(classes) != COCO_CLASSES:
        raise WeightsError(f"{key}: its {len(classes)} classes are not mmdetection's 80 COCO classes in order "
                           f"(first: {list(classes)[:3]})")
    return {c + 1: cat for c, cat in enumerate(COCO_CATEGORY_IDS)}


def check_against(converted: Mapping[str, Tensor], own: Mapping[str, Any], key: str = "checkpoint",
                  source: str = "mmdetection") -> None:
    """Every converted tensor lands on a weight of the model with its shape, and the model lacks none."""
    missing = sorted(set(own) - set(converted))
    if missing:
        raise WeightsError(f"{key}: the {source} checkpoint has nothing for {len(missing)} weights of the model "
                           f"(e.g. {missing[:3]}); was it trained with other options?")
    for name, value in converted.items():
        if name not in own:
            raise WeightsError(f"{key}: converted weight {name!r} has no place in the model")
        if tuple(own[name].shape) != tuple(value.shape):
            raise WeightsError(f"{key}: {name!r} is {tuple(value.shape)} in the checkpoint, {tuple(own[name].shape)} in the model")
