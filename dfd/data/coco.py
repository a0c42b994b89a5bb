"""COCO-layout detection dataset (real COCO 2017 or the synthetic one) with up-front validation."""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

REQUIRED_KEYS = ("images", "annotations", "categories")


class DataError(ValueError):
    """A dataset is missing, malformed or inconsistent; the message names the file or key at fault."""


Transforms = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


def _load_json(ann_file: Path) -> dict[str, Any]:
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"annotation file {ann_file} is not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} "
            f"column {e.colno} (char {e.pos})"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"annotation file {ann_file} is not valid UTF-8 JSON: {e}") from e
    except OSError as e:
        raise DataError(f"annotation file {ann_file} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"annotation file {ann_file}: top level is a {type(data).__name__}, expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DataError(f"annotation file {ann_file} lacks the key(s) {', '.join(map(repr, missing))}")
    for key in REQUIRED_KEYS:
        if not isinstance(data[key], list):
            raise DataError(f"annotation file {ann_file}: {key!r} is a {type(data[key]).__name__}, expected a list")
    return data


def _check_entries(data: dict[str, Any], ann_file: Path) -> None:
    """Check the fields the loader and pycocotools rely on, naming the first bad entry."""
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"annotation file {ann_file}: categories[{i}] needs 'id' and 'name'")
        if cat["id"] in cat_ids:
            raise DataError(f"annotation file {ann_file}: categories[{i}] repeats category id {cat['id']}")
        cat_ids.add(cat["id"])
    img_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"annotation file {ann_file}: images[{i}] needs 'id' and 'file_name'")
        if img["id"] in img_ids:
            raise DataError(f"annotation file {ann_file}: images[{i}] repeats image id {img['id']}")
        img_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann or "bbox" not in ann:
            raise DataError(f"annotation file {ann_file}: annotations[{i}] needs 'id', 'image_id' and 'bbox'")
        if ann.get("category_id") not in cat_ids:
            raise DataError(
                f"annotation file {ann_file}: annotations[{i}] (id {ann['id']}) has category_id "
                f"{ann.get('category_id')!r}, which is not listed in 'categories'"
            )
        if ann["image_id"] not in img_ids:
            raise DataError(
                f"annotation file {ann_file}: annotations[{i}] (id {ann['id']}) has image_id "
                f"{ann['image_id']!r}, which is not listed in 'images'"
            )


def _check_image_files(images: list[dict[str, Any]], image_dir: Path, ann_file: Path) -> None:
    try:
        present = set(os.listdir(image_dir))  # one listing instead of 120k stat calls
    except OSError as e:
        raise DataError(f"image directory {image_dir} cannot be listed: {e}") from e
    missing = [
        img["file_name"]
        for img in images
        if img["file_name"] not in present and not (image_dir / img["file_name"]).is_file()
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} image file(s) referenced by {ann_file} are missing from {image_dir}: {shown}"
        )


def _valid_boxes(
    anns: list[dict[str, Any]], width: float | None, height: float | None, category_to_label: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd boxes as xyxy, clipped to the image, degenerate ones dropped."""
    boxes: list[list[float]] = []
    labels: list[int] = []
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue  # crowd regions are handled by COCOeval, never trained on
        bbox = ann["bbox"]
        if len(bbox) != 4:
            continue
        x, y, w, h = (float(v) for v in bbox)
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), x + w, y + h
        if width is not None:
            x2 = min(x2, float(width))
        if height is not None:
            y2 = min(y2, float(height))
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(category_to_label[ann["category_id"]])
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64).reshape(-1),
    )


class CocoDetection(Dataset):
    """Detection dataset over a COCO-layout root: ``annotations/instances_{split}{year}.json`` + ``{split}{year}/``.

    Labels are contiguous, ``1..num_classes`` in ascending category-id order (0 is background);
    ``label_to_category[label]`` gives the COCO category id back and ``category_names[label - 1]``
    its name. ``coco`` is the pycocotools index (ground truth for COCOeval).

    Items are ``(image, target)``; target holds ``boxes`` (float32 [K, 4], xyxy pixels),
    ``labels`` (int64 [K]), ``image_id`` (int), ``orig_size`` and ``size`` (int64 [2], (h, w)
    of the file and of the returned image). Crowd annotations and degenerate boxes are left out.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transforms | None = None,
        *,
        filter_empty: bool = False,
        year: str = "2017",
    ) -> None:
        if root is None or str(root) == "":
            raise DataError("data.root: not set; give the directory of a COCO-layout dataset")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        if not self.root.is_dir():
            raise DataError(f"data.root: directory {self.root} does not exist")
        self.ann_file = self.root / "annotations" / f"instances_{split}{year}.json"
        self.image_dir = self.root / f"{split}{year}"
        if not self.ann_file.is_file():
            raise DataError(
                f"annotation file {self.ann_file} does not exist (expected the COCO layout "
                f"<data.root>/annotations/instances_{split}{year}.json)"
            )
        if not self.image_dir.is_dir():
            raise DataError(f"image directory {self.image_dir} does not exist (split {split!r})")

        data = _load_json(self.ann_file)
        _check_entries(data, self.ann_file)
        _check_image_files(data["images"], self.image_dir, self.ann_file)
        # Older pycocotools' loadRes copies these keys unconditionally.
        data.setdefault("info", {})
        data.setdefault("licenses", [])

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        cat_ids = sorted(self.coco.cats)
        self.num_classes = len(cat_ids)
        self.category_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self.label_to_category: dict[int, int] = {i + 1: cid for i, cid in enumerate(cat_ids)}
        self.category_names: list[str] = [str(self.coco.cats[cid]["name"]) for cid in cat_ids]

        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if len(self._boxes_from_json(i)[1]) > 0]
        self.ids: list[int] = ids

    def _boxes_from_json(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[image_id]
        return _valid_boxes(
            self.coco.imgToAnns.get(image_id, []), info.get("width"), info.get("height"), self.category_to_label
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.ids[index]
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        width, height = image.size
        boxes, labels = _valid_boxes(
            self.coco.imgToAnns.get(image_id, []), width, height, self.category_to_label
        )
        size = torch.tensor([height, width], dtype=torch.int64)
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "image_id": int(image_id),
            "orig_size": size,
            "size": size.clone(),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            # Keep ``size`` truthful even for transforms that do not maintain it.
            if isinstance(image, torch.Tensor):
                target["size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
            elif isinstance(image, Image.Image):
                target["size"] = torch.tensor([image.height, image.width], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )
