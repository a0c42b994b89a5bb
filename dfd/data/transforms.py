"""Detection transforms on ``(image, target)`` pairs, built on ``torchvision.transforms.v2``.

Boxes travel as ``tv_tensors.BoundingBoxes`` and instance masks as ``tv_tensors.Mask`` inside
``target``, so every geometric step moves them with the image. Labels, ids and sizes are plain
tensors / ints and pass through untouched.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Target = dict[str, Any]

#: Output-size rules of :class:`ScaleToFit`: ``round`` is mmcv's ``rescale_size`` (the paper's
#: mmdetection toolchain), ``floor`` is torchvision's ``GeneralizedRCNNTransform``.
ROUNDINGS = ("round", "floor")


def fit_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The keep-ratio factor ``min(min_size / short side, max_size / long side)``.

    The rule of mmdetection's ``Resize(img_scale=(max_size, min_size), keep_ratio=True)`` and of
    torchvision's ``GeneralizedRCNNTransform(min_size, max_size)``; Python (double) arithmetic,
    as both compute it.
    """
    if min(height, width) <= 0:
        raise ValueError(f"cannot scale an empty image of size {height}x{width}")
    return min(min_size / min(height, width), max_size / max(height, width))


def fit_size(height: int, width: int, min_size: int, max_size: int, rounding: str = "round") -> tuple[int, int]:
    """``(new_h, new_w)`` of an image scaled by :func:`fit_scale`.

    ``rounding="round"``: ``int(side * s + 0.5)`` per side, mmcv's ``rescale_size`` (mmdetection).
    ``rounding="floor"``: ``floor(side * s)``, what ``F.interpolate(scale_factor=s,
    recompute_scale_factor=True)`` gives inside torchvision's ``GeneralizedRCNNTransform``.
    """
    scale = fit_scale(height, width, min_size, max_size)
    if rounding == "round":
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if rounding == "floor":
        return math.floor(height * scale), math.floor(width * scale)
    raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")


class ScaleToFit(v2.Transform):
    """Keep-ratio resize to fit ``min_size`` x ``max_size`` (see :func:`fit_size`).

    Images are resized bilinearly without antialiasing (what mmcv's cv2 ``INTER_LINEAR`` and
    torchvision's detection transform do); ``BoundingBoxes`` are scaled per axis and ``Mask``
    tensors resized with nearest neighbour by torchvision's kernels.
    """

    def __init__(self, min_size: int, max_size: int, rounding: str = "round") -> None:
        super().__init__()
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"ScaleToFit needs positive sizes, got min_size={min_size}, max_size={max_size}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.rounding = rounding

    # make_params / transform are the public v2 hooks of torchvision >= 0.21 (0.26 and 0.29 alike).
    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"size": list(fit_size(height, width, self.min_size, self.max_size, self.rounding))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=False
        )


class RecordSize:
    """Set ``target["size"]`` to the (h, w) of the transformed image (int64 [2])."""

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        height, width = F.get_size(image)
        target = dict(target)
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return "RecordSize()"


def build_transforms(
    train: bool, *, min_size: int, max_size: int, flip_prob: float = 0.5, rounding: str = "round"
) -> v2.Compose:
    """The detection pipeline, called as ``pipeline(pil_image, target)``.

    ToImage, ToDtype(float32, scale=True) (values in [0, 1]), RandomHorizontalFlip(flip_prob)
    (training only, when ``flip_prob > 0``), ScaleToFit, ClampBoundingBoxes (boxes stay inside
    the canvas), RecordSize. mmdetection's train pipeline flips after resizing; the two commute.
    The flip draws from torch's global RNG: seed it per sample (``CocoDetection`` does, given a
    ``(index, sample_seed)`` pair).
    """
    steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    steps += [ScaleToFit(min_size, max_size, rounding), v2.ClampBoundingBoxes(), RecordSize()]
    return v2.Compose(steps)

