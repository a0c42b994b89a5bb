"""Cityscapes semantic segmentation (Table 7, PSPNet): the official layout, mmseg's pipelines.

Layout read at ``data.root``::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids (0..33) become the 19 train ids of the official table (``cityscapesscripts``'
``labels.py``); every other id is 255, ignored. mmseg reads ``*_labelTrainIds.png`` made by its
conversion script from the same table: the result is the same map.

Training pipeline (MGD's ``seg/configs/_base_/datasets/cityscapes_512x512.py``): keep-ratio
resize of ``base_size`` (2048, 1024) times a ratio drawn in ``scale_range`` [0.5, 2.0]; random crop
of ``crop_size`` 512x512 re-drawn up to 10 times until no class covers more than ``cat_max_ratio``
0.75 of its labelled pixels; horizontal flip 0.5; photometric distortion. The crop is padded to
``crop_size`` (image with the mean colour, label with 255) when it comes out smaller: the image by
the batch (``InputSpec``: padding after normalisation), the label by the model.
Evaluation: the image resized to fit ``base_size`` (mmseg's test ``Resize(keep_ratio=True)``), the
label at its original size (predictions are scored at the original resolution).

Items are ``(image, target)``: a ``tv_tensors.Image`` float32 [3, h, w] in [0, 1] and ``sem_seg``
(``tv_tensors.Mask`` int64 [h, w]), ``image_id`` (its index), ``file_name``, ``size`` and
``orig_size`` ((h, w) of the returned image and of the file).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .coco import DataError, _parse_item
from .options import parse_options
from .registry import DataNeeds, DatasetEntry, register_dataset
from .transforms import fit_size

IGNORE_INDEX = 255
SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

#: The 19 evaluated classes, in train-id order.
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: The label id of each train id (cityscapesscripts' ``labels.py``; ids not listed are ignored).
TRAIN_ID_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
MAX_LABEL_ID = 33  # 'bicycle'; 'license plate' (-1) never appears in a labelIds PNG


def id_to_train_id_table() -> np.ndarray:
    """uint8 [256]: train id of each label id (255 = ignored: 0 unlabeled, 1 ego vehicle, 9 parking, ...)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(TRAIN_ID_TO_LABEL_ID):
        table[label_id] = train_id
    return table


ID_TO_TRAIN_ID = id_to_train_id_table()


@dataclass
class SyntheticCityscapesConfig:
    """Parameters of ``data.kind=synthetic_cityscapes`` (:mod:`dfd.data.synthetic_cityscapes`)."""

    seed: int = 0
    num_train: int = 24
    num_val: int = 8
    height: int = 128
    width: int = 256


@dataclass
class SegmentationDataOptions:
    """``data.segmentation``: the segmentation pipelines (values: MGD's ``cityscapes_512x512.py``).

    Sizes: ``crop_size`` is (h, w); ``base_size`` is mmseg's ``img_scale`` (long, short) = (2048, 1024).
    ``test_resize``: resize evaluation images to fit ``base_size`` (identity for 2048x1024 Cityscapes).
    ``photometric``: mmseg's ``PhotoMetricDistortion`` (see :func:`photometric_distortion`).
    (``data.verify_images`` decodes every image and label file of both splits up front.)
    """

    crop_size: List[int] = field(default_factory=lambda: [512, 512])
    scale_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    base_size: List[int] = field(default_factory=lambda: [2048, 1024])
    cat_max_ratio: float = 0.75
    crop_tries: int = 11  # mmseg: a first draw and up to 10 re-draws, the last kept unchecked
    flip_prob: float = 0.5
    photometric: bool = True
    test_resize: bool = True
    synthetic: SyntheticCityscapesConfig = field(default_factory=SyntheticCityscapesConfig)

    def check(self) -> None:
        """DataError naming ``data.segmentation.<key>`` for the first bad value."""
        def fail(key: str, expected: str) -> None:
            raise DataError(f"data.segmentation.{key}={getattr(self, key)!r} is invalid: {expected}")

        for key in ("crop_size", "base_size"):
            value = list(getattr(self, key))
            if len(value) != 2 or any(int(v) <= 0 for v in value):
                fail(key, "expected two positive sizes")
        lo_hi = list(self.scale_range)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            fail("scale_range", "expected [low, high] ratios with 0 < low <= high")
        if not 0 < self.cat_max_ratio <= 1:
            fail("cat_max_ratio", "expected a fraction in (0, 1] (1: no constraint)")
        if self.crop_tries < 1:
            fail("crop_tries", "expected at least 1")
        if not 0 <= self.flip_prob <= 1:
            fail("flip_prob", "expected a probability in [0, 1]")


def segmentation_options(values: Mapping[str, Any] | SegmentationDataOptions | None) -> SegmentationDataOptions:
    """``data.segmentation`` as plain values (what a builder gets) -> checked options; unknown keys named."""
    options = parse_options(values, SegmentationDataOptions, "data.segmentation")
    options.check()
    return options


# ----------------------------------------------------------------------------- transforms


def ratio_size(height: int, width: int, base_size: tuple[int, int], ratio: float) -> tuple[int, int]:
    """mmseg ``Resize(img_scale=base, ratio_range)``: scale = (int(L·r), int(S·r)), then mmcv's keep-ratio
    rescale: s = min(L'/long side, S'/short side), sides int(side·s + 0.5)."""
    long_side, short_side = int(max(base_size) * ratio), int(min(base_size) * ratio)
    return fit_size(height, width, short_side, long_side, "round")


def crop_box(label: torch.Tensor, crop: tuple[int, int], max_ratio: float, tries: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of mmseg's ``RandomCrop(cat_max_ratio)``: a uniform offset, re-drawn until the crop
    holds at least two labelled classes, none with ≥ ``max_ratio`` of its labelled pixels; the
    ``tries``-th draw is kept unchecked (mmseg: 11, its first draw and 10 re-draws; an all-ignored image
    keeps it)."""
    h, w = label.shape[-2:]
    ch, cw = min(crop[0], h), min(crop[1], w)
    for attempt in range(tries):
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        if max_ratio >= 1 or attempt == tries - 1:
            break
        patch = label[..., top:top + ch, left:left + cw]
        counts = torch.bincount(patch[patch != IGNORE_INDEX].flatten().long())
        counts = counts[counts > 0]
        if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < max_ratio:
            break
    return top, left, ch, cw


def _coin() -> bool:
    return bool(torch.randint(0, 2, ()))


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def scale_saturation(image: torch.Tensor, alpha: float) -> torch.Tensor:
    """HSV saturation times α, hue and value kept: c' = V − (V − c)·min(α, V / (V − min)) per pixel
    (S' = min(α·S, 1) with S = (V − min) / V; each channel is linear in S at fixed H and V)."""
    value = image.max(0, keepdim=True).values
    spread = value - image.min(0, keepdim=True).values
    factor = torch.where(spread > 0, torch.minimum(torch.full_like(spread, alpha), value / spread.clamp(min=1e-12)),
                         torch.ones_like(spread))
    return value - (value - image) * factor


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a float image in [0, 1], each step with probability 1/2:

    brightness x + δ, δ ~ U(−32, 32)/255; contrast α·x, α ~ U(0.5, 1.5) (before or after the next two, at
    random); saturation S·α, α ~ U(0.5, 1.5); hue H + k/180 of a turn, k ~ U{−18..17}; clipped to [0, 1]
    after each. mmseg rounds to uint8 after each step; here values stay float.
    """
    if _coin():
        image = (image + _uniform(-32, 32) / 255).clamp(0, 1)
    contrast_first = _coin()

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return (x * _uniform(0.5, 1.5)).clamp(0, 1) if _coin() else x

    if contrast_first:
        image = contrast(image)
    if _coin():
        image = scale_saturation(image, _uniform(0.5, 1.5)).clamp(0, 1)
    if _coin():
        image = F.adjust_hue(image, int(torch.randint(-18, 18, ())) / 180)
    if not contrast_first:
        image = contrast(image)
    return image


class TrainPipeline:
    """Ratio resize -> cat-max-ratio crop -> flip -> photometric distortion, on a uint8 Image and its Mask."""

    def __init__(self, options: SegmentationDataOptions) -> None:
        self.o = options

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        o = self.o
        size = ratio_size(*image.shape[-2:], tuple(o.base_size), _uniform(*o.scale_range))
        image = F.resize(image, list(size), antialias=False)  # bilinear, as mmcv's cv2 INTER_LINEAR
        label = F.resize(label, list(size))  # a Mask: nearest
        top, left, h, w = crop_box(label, tuple(o.crop_size), o.cat_max_ratio, o.crop_tries)
        image, label = F.crop(image, top, left, h, w), F.crop(label, top, left, h, w)
        if float(torch.rand(())) < o.flip_prob:
            image, label = F.horizontal_flip(image), F.horizontal_flip(label)
        image = F.to_dtype(image, torch.float32, scale=True)
        if o.photometric:
            image = tv_tensors.wrap(photometric_distortion(image.as_subclass(torch.Tensor)), like=image)
        return image, label


class EvalPipeline:
    """Keep-ratio resize of the image to fit ``base_size`` (if ``test_resize``); the label untouched."""

    def __init__(self, options: SegmentationDataOptions) -> None:
        self.o = options

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if self.o.test_resize:
            size = ratio_size(*image.shape[-2:], tuple(self.o.base_size), 1.0)
            if tuple(size) != tuple(image.shape[-2:]):
                image = F.resize(image, list(size), antialias=False)
        return F.to_dtype(image, torch.float32, scale=True), label


# ----------------------------------------------------------------------------- dataset


def _city_pairs(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    """(image, label) paths of every ``*_leftImg8bit.png`` under ``image_dir/<city>/``, sorted; DataError
    naming the first label file that is missing."""
    pairs = []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[: -len(IMAGE_SUFFIX)]
        label = label_dir / image.parent.name / f"{stem}{LABEL_SUFFIX}"
        if not label.is_file():
            raise DataError(f"label file {label} does not exist (the label of image {image})")
        pairs.append((image, label))
    return pairs


def read_label(path: Path) -> np.ndarray:
    """The train-id map (uint8 [H, W]) of a labelIds PNG; DataError naming the file if unreadable or
    holding an id above 33."""
    try:
        with Image.open(path) as f:
            ids = np.asarray(f)
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e}") from e
    if ids.ndim != 2:
        raise DataError(f"label file {path} has shape {ids.shape}; expected a single-channel map of label ids")
    if ids.size and int(ids.max()) > MAX_LABEL_ID:
        raise DataError(f"label file {path} holds label id {int(ids.max())}; Cityscapes label ids are 0..{MAX_LABEL_ID}")
    return ID_TO_TRAIN_ID[ids.astype(np.int64)]


class CityscapesSegmentation(Dataset):
    """One split of Cityscapes (fine labels) at ``root``; ``ds[index]`` or ``ds[index, sample_seed]``.

    Given a ``sample_seed`` the random transforms draw from the CPU generator seeded with it inside
    ``torch.random.fork_rng``: an item is a pure function of (index, seed), the global RNG untouched.
    """

    num_classes = len(CLASSES)
    ignore_index = IGNORE_INDEX
    class_names = CLASSES
    label_to_category = {i: label_id for i, label_id in enumerate(TRAIN_ID_TO_LABEL_ID)}

    def __init__(self, root: str | Path, split: str, options: SegmentationDataOptions, *, train: bool,
                 verify: bool = False) -> None:
        if split not in SPLITS:
            raise DataError(f"cityscapes: split {split!r} is not one of {', '.join(SPLITS)}")
        self.root, self.split, self.options = Path(root), split, options
        if not self.root.is_dir():
            raise DataError(f"data.root: directory {self.root} does not exist")
        image_dir, label_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise DataError(f"directory {d} does not exist (expected the Cityscapes layout leftImg8bit/{split}/<city>/, "
                                f"gtFine/{split}/<city>/ under data.root)")
        self.files = _city_pairs(image_dir, label_dir)
        if not self.files:
            raise DataError(f"no *{IMAGE_SUFFIX} images under {image_dir}/<city>/")
        if verify:
            for index in range(len(self.files)):
                self.load(index)
        self.transforms = TrainPipeline(options) if train else EvalPipeline(options)

    def __len__(self) -> int:
        return len(self.files)

    def aspect_groups(self) -> list[int]:
        """One group: training crops share one size."""
        return [0] * len(self.files)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The file's uint8 RGB image [3, H, W] and its train-id map [H, W] (uint8); sizes must agree."""
        image_path, label_path = self.files[index]
        try:
            with Image.open(image_path) as f:
                image = np.asarray(f.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {image_path}: {e}") from e
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DataError(f"label file {label_path} is {label.shape[0]}x{label.shape[1]}, its image "
                            f"{image_path} {image.shape[0]}x{image.shape[1]}")
        return (tv_tensors.Image(torch.from_numpy(image.copy()).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(label)))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        index, sample_seed = _parse_item(item)
        image, label = self.load(index)
        orig = torch.tensor(label.shape[-2:], dtype=torch.int64)
        if sample_seed is None:
            image, label = self.transforms(image, label)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed)
                image, label = self.transforms(image, label)
        target = {"sem_seg": tv_tensors.Mask(label.as_subclass(torch.Tensor).long()), "image_id": int(index),
                  "file_name": self.files[index][0].name, "orig_size": orig,
                  "size": torch.tensor(image.shape[-2:], dtype=torch.int64)}
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


def cityscapes_pair(root: str | Path, options: SegmentationDataOptions,
                    verify: bool = False) -> tuple[CityscapesSegmentation, CityscapesSegmentation]:
    """(train with the training pipeline, val with the evaluation one); ``verify`` decodes every file first."""
    return (CityscapesSegmentation(root, "train", options, train=True, verify=verify),
            CityscapesSegmentation(root, "val", options, train=False, verify=verify))


# ----------------------------------------------------------------------------- registration


def _build_cityscapes(root: str | Path | None, needs: DataNeeds, **options: Any):
    """Real Cityscapes at ``data.root``."""
    if root is None or str(root) == "":
        raise DataError("data.root: not set; give the Cityscapes directory (holding leftImg8bit/ and gtFine/)")
    return cityscapes_pair(root, segmentation_options(options.get("segmentation")), bool(options.get("verify_images")))


def _build_synthetic_cityscapes(root: str | Path | None, needs: DataNeeds, **options: Any):
    """The synthetic Cityscapes-layout set, generated on first use (default ``$DFD_CACHE/synthetic_cityscapes/<digest>``)."""
    from .synthetic_cityscapes import ensure_synthetic_cityscapes, synthetic_cityscapes_root

    seg = segmentation_options(options.get("segmentation"))
    params = dataclasses.asdict(seg.synthetic)
    if root is None or str(root) == "":
        root = synthetic_cityscapes_root(params)
    return cityscapes_pair(ensure_synthetic_cityscapes(root, **params), seg, bool(options.get("verify_images")))


CITYSCAPES = register_dataset(DatasetEntry(
    "cityscapes", "Cityscapes semantic segmentation, fine labels (Table 7, PSPNet) at data.root",
    builder=_build_cityscapes, pipelines=("segmentation",)))
SYNTHETIC_CITYSCAPES = register_dataset(DatasetEntry(
    "synthetic_cityscapes", "street-like scenes in the Cityscapes layout with labelIds PNGs, generated on first use",
    needs_root=False, builder=_build_synthetic_cityscapes, pipelines=("segmentation",), twin="cityscapes"))

__all__ = ["CLASSES", "CityscapesSegmentation", "SegmentationDataOptions", "SyntheticCityscapesConfig",
           "TRAIN_ID_TO_LABEL_ID", "crop_box", "photometric_distortion", "ratio_size", "segmentation_options"]
