"""Detection transforms on ``(image, target)`` pairs; boxes are xyxy pixels in ``target["boxes"]``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

Target = dict[str, Any]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any, Target], tuple[Any, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToTensor:
    """PIL image (any mode) -> float32 tensor [3, H, W] in [0, 1]."""

    def __call__(self, image: Any, target: Target) -> tuple[torch.Tensor, Target]:
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            image = TF.pil_to_tensor(image)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"ToTensor expects a PIL image or a tensor, got {type(image).__name__}")
        if image.dtype == torch.uint8:
            image = image.to(torch.float32).div_(255.0)
        return image, target

    def __repr__(self) -> str:
        return "ToTensor()"


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """torchvision GeneralizedRCNNTransform's factor: min(min_size / short side, max_size / long side).

    Python (double) arithmetic, as torchvision's eager path uses, so output sizes agree exactly.
    """
    return min(min_size / min(height, width), max_size / max(height, width))


class Resize:
    """Resize a [C, H, W] tensor with GeneralizedRCNNTransform's rule (bilinear); scale boxes; set ``size``."""

    def __init__(self, min_size: int, max_size: int) -> None:
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"Resize needs positive sizes, got min_size={min_size}, max_size={max_size}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if not isinstance(image, torch.Tensor):
            raise TypeError("Resize expects a tensor image; put ToTensor before it")
        h, w = int(image.shape[-2]), int(image.shape[-1])
        scale = resize_scale(h, w, self.min_size, self.max_size)
        # Same call as torchvision's _resize_image_and_masks: output = floor(input * scale).
        image = F.interpolate(
            image[None], size=None, scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
        new_h, new_w = image.shape[-2:]
        target = dict(target)
        if "boxes" in target:
            # Per-axis ratios of the actual sizes, as torchvision's resize_boxes does.
            ratio_w = torch.tensor(new_w, dtype=torch.float32) / torch.tensor(w, dtype=torch.float32)
            ratio_h = torch.tensor(new_h, dtype=torch.float32) / torch.tensor(h, dtype=torch.float32)
            target["boxes"] = target["boxes"] * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror image and boxes with probability ``p`` (draws from torch's global RNG)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        if torch.rand(1).item() >= self.p:
            return image, target
        if isinstance(image, Image.Image):
            width = image.width
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            width = image.shape[-1]
            image = image.flip(-1)
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def build_transforms(train: bool, *, min_size: int, max_size: int, flip_prob: float = 0.5) -> Compose:
    """ToTensor, a random horizontal flip (training only), then Resize."""
    steps: list[Callable[[Any, Target], tuple[Any, Target]]] = [ToTensor()]
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    steps.append(Resize(min_size, max_size))
    return Compose(steps)
