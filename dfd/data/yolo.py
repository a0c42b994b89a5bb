"""The ``yolo`` data pipeline: YOLOv6 0.2.0's letterbox, mosaic, mixup, random affine, HSV and flips over a COCO-layout set.

Written from ``yolov6/data/datasets.py`` and ``yolov6/data/data_augment.py`` of tag 0.2.0 (PIL and numpy
instead of OpenCV). Training items are ``img_size`` × ``img_size``:

- with probability ``mosaic``: four images (this one and three drawn at random), each resized so its long
  side is ``img_size``, tiled around a random centre of a 2s × 2s gray (114) canvas, then a random affine
  (rotation ±``degrees``, scale 1 ± ``scale``, shear ±``shear``°, translation (0.5 ± ``translate``)·s) maps it
  to s × s; with probability ``mixup`` it is blended with a second mosaic (ratio ~ Beta(32, 32));
- otherwise (and always in the last ``stop_aug_last_n_epoch`` epochs, see :meth:`YoloDataset.set_epoch`): the
  image letterboxed (resized, centred on gray) to s × s, then the same random affine;
- then HSV gains (1 ± ``hsv_h``/``hsv_s``/``hsv_v``, through lookup tables) and flips (``flipud``, ``fliplr``).

Boxes follow every step; after an affine a box is kept when wider and taller than ``min_box_side`` px, keeping
more than ``min_area_ratio`` of its scaled area, with aspect ratio below ``max_aspect`` (``box_candidates``).
Validation items: the image resized so its long side is ``img_size``, unpadded (the batch pads it at the bottom
and right with the letterbox gray, to a multiple of 32: the release's rectangular evaluation, without its extra
half-stride pad); ``size`` / ``orig_size`` map predictions back to the original pixels.

Randomness: an item ``ds[index, seed]`` draws everything from ``numpy.random.default_rng(seed)``: a pure
function of (index, seed, epoch's mosaic switch). A bare index draws a seed from torch's global generator.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .coco import CocoDetection, DataError, _parse_item
from .options import parse_options

GRAY = 114


@dataclass
class YoloDataOptions:
    """``data.yolo``: the release's ``data_aug`` of ``configs/yolov6{t,s}.py`` and ``--img-size`` /
    ``--stop_aug_last_n_epoch`` of ``tools/train.py`` (0.2.0)."""

    img_size: int = 640
    mosaic: float = 1.0
    mixup: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    stop_aug_last_n_epoch: int = 15  # mosaic and mixup off for the last n epochs (n <= 0: never)
    min_box_side: float = 2.0  # box_candidates: wh_thr (pixels)
    min_area_ratio: float = 0.1  # box_candidates: area_thr
    max_aspect: float = 20.0  # box_candidates: ar_thr

    def check(self) -> None:
        if self.img_size <= 0 or self.img_size % 32:
            raise DataError(f"data.yolo.img_size={self.img_size} is invalid: expected a positive multiple of 32")
        for name in ("mosaic", "mixup", "flipud", "fliplr", "translate", "scale"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DataError(f"data.yolo.{name}={value} is invalid: expected a number in [0, 1]")


def yolo_options(values: Mapping[str, Any] | YoloDataOptions | None) -> YoloDataOptions:
    """``data.yolo`` as :class:`YoloDataOptions`, checked; DataError naming the unknown keys."""
    options = parse_options(values, YoloDataOptions, "data.yolo")
    options.check()
    return options


# ----------------------------------------------------------------------------- geometry


def resize_long_side(image: Image.Image, boxes: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Resize so the long side is ``size`` (``load_image``: r = size / max(h, w), sides int(side·r)); boxes · r."""
    w0, h0 = image.size
    r = size / max(h0, w0)
    if r == 1:
        return image, boxes
    w, h = max(int(w0 * r), 1), max(int(h0 * r), 1)
    return image.resize((w, h), Image.BILINEAR), boxes * np.array([w / w0, h / h0, w / w0, h / h0], dtype=np.float32)


def letterbox(image: Image.Image, boxes: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Keep-ratio resize into size × size (r = min(size/h, size/w), sides round(side·r)), centred on gray 114:
    left = round(dw/2 − 0.1), top = round(dh/2 − 0.1); boxes · r + (left, top)."""
    w0, h0 = image.size
    r = min(size / h0, size / w0)
    w, h = int(round(w0 * r)), int(round(h0 * r))
    if (w, h) != (w0, h0):
        image = image.resize((w, h), Image.BILINEAR)
    left, top = int(round((size - w) / 2 - 0.1)), int(round((size - h) / 2 - 0.1))
    canvas = Image.new("RGB", (size, size), (GRAY,) * 3)
    canvas.paste(image, (left, top))
    scale = np.array([w / w0, h / h0, w / w0, h / h0], dtype=np.float32)
    return canvas, boxes * scale + np.array([left, top, left, top], dtype=np.float32)


def affine_matrix(rng: np.random.Generator, shape: tuple[int, int], out: int, o: YoloDataOptions) -> tuple[np.ndarray, float]:
    """M = T·S·R·C (``get_transform_matrix``): C centres the input, R rotates by a ~ U(±degrees) and scales by
    s ~ U(1 ± scale), S shears by U(±shear)° on each axis, T moves the centre to (U(0.5 ± translate)·out)."""
    h, w = shape
    c = np.eye(3)
    c[:2, 2] = (-w / 2, -h / 2)
    a, s = math.radians(rng.uniform(-o.degrees, o.degrees)), rng.uniform(1 - o.scale, 1 + o.scale)
    r = np.eye(3)
    r[:2, :2] = [[s * math.cos(a), s * math.sin(a)], [-s * math.sin(a), s * math.cos(a)]]
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-o.shear, o.shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-o.shear, o.shear)))
    t = np.eye(3)
    t[:2, 2] = (rng.uniform(0.5 - o.translate, 0.5 + o.translate) * out, rng.uniform(0.5 - o.translate, 0.5 + o.translate) * out)
    return t @ sh @ r @ c, s


def box_candidates(before: np.ndarray, after: np.ndarray, o: YoloDataOptions) -> np.ndarray:
    """Keep a box with w, h > min_box_side, area / (scaled area before) > min_area_ratio, max(w/h, h/w) < max_aspect."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > o.min_box_side) & (h2 > o.min_box_side) & (w2 * h2 / (w1 * h1 + 1e-16) > o.min_area_ratio) & (aspect < o.max_aspect)


def random_affine(image: Image.Image, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator, out: int,
                  o: YoloDataOptions) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Warp into out × out by :func:`affine_matrix` (bilinear, gray border); boxes: the hull of their moved corners,
    clipped to the output, filtered by :func:`box_candidates`."""
    m, s = affine_matrix(rng, (image.height, image.width), out, o)
    if not np.allclose(m, np.eye(3)) or image.size != (out, out):
        inv = np.linalg.inv(m)
        image = image.transform((out, out), Image.AFFINE, tuple(inv[:2].reshape(-1)), Image.BILINEAR, fillcolor=(GRAY,) * 3)
    if len(boxes) == 0:
        return image, boxes, labels
    corners = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 2)
    moved = (np.c_[corners, np.ones(len(corners))] @ m.T)[:, :2].reshape(-1, 4, 2)
    new = np.concatenate([moved.min(1), moved.max(1)], 1).clip(0, out)
    keep = box_candidates(boxes * s, new, o)
    return image, new[keep].astype(np.float32), labels[keep]


def hsv_augment(image: Image.Image, rng: np.random.Generator, o: YoloDataOptions) -> Image.Image:
    """HSV gains g ~ 1 + U(±1)·(hsv_h, hsv_s, hsv_v): hue ← (h·g_h) mod 256 (PIL's hue circle is 0..255, OpenCV's
    0..179), saturation and value ← clip(x·g, 0, 255), through lookup tables (``augment_hsv``)."""
    if not (o.hsv_h or o.hsv_s or o.hsv_v):
        return image
    g = rng.uniform(-1, 1, 3) * (o.hsv_h, o.hsv_s, o.hsv_v) + 1
    x = np.arange(256, dtype=np.float64)
    luts = [((x * g[0]) % 256).astype(np.uint8), np.clip(x * g[1], 0, 255).astype(np.uint8),
            np.clip(x * g[2], 0, 255).astype(np.uint8)]
    hsv = np.asarray(image.convert("HSV"))
    out = np.stack([lut[hsv[..., i]] for i, lut in enumerate(luts)], -1)
    return Image.fromarray(out, "HSV").convert("RGB")


def flips(image: Image.Image, boxes: np.ndarray, rng: np.random.Generator, o: YoloDataOptions) -> tuple[Image.Image, np.ndarray]:
    """Up-down with probability flipud (y ← H − y), then left-right with probability fliplr (x ← W − x)."""
    w, h = image.size
    if rng.random() < o.flipud:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
        boxes = np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1) if len(boxes) else boxes
    if rng.random() < o.fliplr:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1) if len(boxes) else boxes
    return image, boxes


# ----------------------------------------------------------------------------- the dataset


class YoloDataset(torch.utils.data.Dataset):
    """A :class:`~dfd.data.CocoDetection` (loaded without transforms) through the YOLOv6 pipeline.

    Items are ``(image, target)``: a float32 [3, h, w] tensor in [0, 1] and ``boxes`` (float32 [K, 4] xyxy
    pixels of that image), ``labels`` (int64 [K], 1..num_classes), ``image_id``, ``orig_size``, ``size``.
    Everything else (``num_classes``, ``coco``, ``label_to_category``, ...) is the COCO dataset's.
    """

    def __init__(self, base: CocoDetection, options: YoloDataOptions, train: bool) -> None:
        self.base, self.options, self.train = base, options, train
        self.mosaic_on = True

    def __getattr__(self, name: str) -> Any:
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Mosaic and mixup stop for the last ``stop_aug_last_n_epoch`` epochs (epoch ≥ epochs − n, as the
        release's ``prepare_for_steps``); the other augmentations go on."""
        n = self.options.stop_aug_last_n_epoch
        self.mosaic_on = not (n > 0 and epochs is not None and epoch >= epochs - n)

    def aspect_groups(self) -> list[int]:
        """One group: every training item is img_size × img_size (validation items keep the file's ratio)."""
        return [0] * len(self) if self.train else self.base.aspect_groups()

    def load_resized(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray, dict[str, Any]]:
        """Image ``index`` resized to long side img_size, its boxes (float32 [K, 4]) and labels (int64 [K]), its target."""
        image, target = self.base.load(index)
        boxes = target["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float32).reshape(-1, 4)
        image, boxes = resize_long_side(image, boxes, self.options.img_size)
        return image, boxes, target["labels"].numpy().astype(np.int64), target

    def mosaic(self, index: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        """Four images tiled around (xc, yc) ~ U(s/2, 3s/2) of a 2s canvas (this one and three uniform draws, shuffled), then
        the random affine to s × s (``mosaic_augmentation``)."""
        s = self.options.img_size
        indices = [index, *rng.integers(0, len(self), 3).tolist()]
        rng.shuffle(indices)
        xc, yc = (int(rng.uniform(s // 2, 3 * s // 2)) for _ in range(2))
        canvas = Image.new("RGB", (2 * s, 2 * s), (GRAY,) * 3)
        all_boxes, all_labels = [], []
        for k, i in enumerate(indices):
            image, boxes, labels, _ = self.load_resized(i)
            w, h = image.size
            x0 = max(xc - w, 0) if k in (0, 2) else xc
            y0 = max(yc - h, 0) if k in (0, 1) else yc
            x1 = xc if k in (0, 2) else min(xc + w, 2 * s)
            y1 = yc if k in (0, 1) else min(yc + h, 2 * s)
            bx = w - (x1 - x0) if k in (0, 2) else 0  # where the tile's crop starts in the image
            by = h - (y1 - y0) if k in (0, 1) else 0
            canvas.paste(image.crop((bx, by, bx + x1 - x0, by + y1 - y0)), (x0, y0))
            all_boxes.append(boxes + np.array([x0 - bx, y0 - by] * 2, dtype=np.float32))
            all_labels.append(labels)
        boxes = np.concatenate(all_boxes).clip(0, 2 * s)
        return random_affine(canvas, boxes, np.concatenate(all_labels), rng, s, self.options)

    def train_item(self, index: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        o = self.options
        if self.mosaic_on and rng.random() < o.mosaic:
            image, boxes, labels = self.mosaic(index, rng)
            if rng.random() < o.mixup:
                other, boxes2, labels2 = self.mosaic(int(rng.integers(0, len(self))), rng)
                r = rng.beta(32.0, 32.0)
                mixed = np.asarray(image, np.float64) * r + np.asarray(other, np.float64) * (1 - r)
                image = Image.fromarray(mixed.astype(np.uint8))
                boxes, labels = np.concatenate([boxes, boxes2]), np.concatenate([labels, labels2])
        else:
            image, boxes, labels, _ = self.load_resized(index)
            image, boxes = letterbox(image, boxes, o.img_size)
            image, boxes, labels = random_affine(image, boxes, labels, rng, o.img_size, o)
        image = hsv_augment(image, rng, o)
        image, boxes = flips(image, boxes, rng, o)
        return image, boxes, labels

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = _parse_item(item)
        if not self.train:
            image, boxes, labels, target = self.load_resized(index)
        else:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            image, boxes, labels = self.train_item(index, np.random.default_rng(seed))
            target = {"image_id": int(self.base.ids[index]), "orig_size": torch.tensor([image.height, image.width])}
        w, h = image.size
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        tensor = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return tensor, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(np.asarray(labels, np.int64)),
                        "image_id": target["image_id"], "orig_size": target["orig_size"],
                        "size": torch.tensor([h, w], dtype=torch.int64)}

    def __repr__(self) -> str:
        return f"YoloDataset({self.base!r}, train={self.train}, img_size={self.options.img_size})"


def yolo_datasets(root: str | Path, yolo: Mapping[str, Any] | None = None, *, filter_empty_train: bool = True,
                  verify_images: bool = False, **_: Any) -> tuple[YoloDataset, YoloDataset]:
    """train2017 and val2017 of a COCO-layout ``root`` through the ``yolo`` pipeline (``data.yolo`` options)."""
    options = yolo_options(yolo)
    train = CocoDetection(root, "train", None, filter_empty=filter_empty_train, verify=verify_images)
    val = CocoDetection(root, "val", None, verify=verify_images)
    return YoloDataset(train, options, True), YoloDataset(val, options, False)
