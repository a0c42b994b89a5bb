"""COCO-layout detection dataset (real COCO 2017 or the synthetic one) with up-front validation."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

REQUIRED_KEYS = ("images", "annotations", "categories")

log = logging.getLogger(__name__)


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
        if not _finite_box(ann["bbox"]):
            file_name = next(img["file_name"] for img in data["images"] if img["id"] == ann["image_id"])
            raise DataError(
                f"annotation file {ann_file}: annotation id {ann['id']} (image id {ann['image_id']}, file "
                f"{file_name}) has bbox {ann['bbox']!r}; expected 4 finite numbers [x, y, width, height]"
            )


def _finite_box(bbox: Any) -> bool:
    """Whether ``bbox`` is 4 finite numbers (JSON's NaN and Infinity, null, strings are not)."""
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))


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


def _decode_error(path: Path) -> str | None:
    """None if the image file at ``path`` decodes completely, else why not."""
    try:
        with Image.open(path) as f:
            f.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"{path.name}: {e}"
    return None


def verify_images(image_dir: Path, file_names: list[str], ann_file: Path) -> None:
    """Decode every image file (``data.verify_images=true``); DataError naming the files that do not decode."""
    paths = [image_dir / name for name in file_names]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL
        errors = [e for e in pool.map(_decode_error, paths) if e is not None]
    if errors:
        shown = "; ".join(errors[:5]) + ("; ..." if len(errors) > 5 else "")
        raise DataError(f"{len(errors)} of {len(paths)} image file(s) of {ann_file} in {image_dir} do not decode: {shown}")
    log.info("data.verify_images: all %d image files in %s decode", len(paths), image_dir)


def _report_dropped(coco: COCO, ann_file: Path) -> int:
    """Count the boxes the loader drops (empty once clipped to their image, per the JSON's size) and say so once."""
    dropped = []
    for image_id, anns in coco.imgToAnns.items():
        info = coco.imgs[image_id]
        usable = [a for a in anns if not a.get("iscrowd", 0)]
        kept, _ = _valid_annotations(usable, info.get("width"), info.get("height"))
        kept_ids = {id(a) for a in kept}
        dropped += [(a, info) for a in usable if id(a) not in kept_ids]
    if dropped:
        ann, info = dropped[0]
        log.warning("%s: %d of %d boxes are dropped: empty, or outside their image once clipped to it "
                    "(e.g. annotation id %s, bbox %s, image %s of %sx%s)", ann_file, len(dropped), len(coco.anns),
                    ann["id"], ann["bbox"], info["file_name"], info.get("width"), info.get("height"))
    return len(dropped)


def _valid_annotations(
    anns: list[dict[str, Any]], width: float | None, height: float | None
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Non-crowd annotations with a usable box, and those boxes as xyxy clipped to the image.

    Crowd regions are left to COCOeval (never trained on, as in mmdetection's CocoDataset and
    torchvision's detection references); boxes that are empty after clipping are dropped.
    """
    kept: list[dict[str, Any]] = []
    boxes: list[list[float]] = []
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
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
        kept.append(ann)
        boxes.append([x1, y1, x2, y2])
    return kept, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _parse_item(item: Any) -> tuple[int, int | None]:
    """``index`` or ``(index, sample_seed)`` (what :class:`~dfd.data.EpochBatchSampler` yields)."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise TypeError(f"expected an index or an (index, sample_seed) pair, got {item!r}")
        return operator.index(item[0]), operator.index(item[1])
    return operator.index(item), None


class CocoDetection(Dataset):
    """Detection dataset over a COCO-layout root: ``annotations/instances_{split}{year}.json`` + ``{split}{year}/``.

    Labels are contiguous, ``1..num_classes`` in ascending category-id order (0 is background);
    ``label_to_category[label]`` gives the COCO category id back and ``category_names[label - 1]``
    its name. ``coco`` is the pycocotools index (ground truth for COCOeval).

    ``ds[index]`` or ``ds[index, sample_seed]`` is ``(image, target)``. Without ``transforms``
    the image is the file as an RGB PIL image; with :func:`~dfd.data.build_transforms` it is a
    ``tv_tensors.Image`` float32 [3, h, w] in [0, 1]. ``target`` holds ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY float32 [K, 4], pixels), ``labels`` (int64 [K]),
    ``masks`` (``tv_tensors.Mask`` uint8 [K, h, w], only with ``with_masks``), ``image_id``
    (int), ``orig_size`` and ``size`` (int64 [2], (h, w) of the file and of the returned image).
    Crowd annotations and degenerate boxes are left out.

    Checked before training: every box is 4 finite numbers (else DataError naming the annotation
    id and the image file); the boxes dropped as empty or outside their image are counted
    (``dropped_boxes``) and reported once; ``verify=True`` decodes every image file.

    Given a ``sample_seed`` the transforms draw their randomness from a CPU generator seeded
    with it inside ``torch.random.fork_rng``, so an item is a pure function of (index, seed)
    and the global RNG is left as it was. A bare index draws from the global RNG.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transforms | None = None,
        *,
        filter_empty: bool = False,
        with_masks: bool = False,
        year: str = "2017",
        verify: bool = False,
    ) -> None:
        if root is None or str(root) == "":
            raise DataError("data.root: not set; give the directory of a COCO-layout dataset")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.with_masks = bool(with_masks)
        self.ann_file, self.image_dir = self._locate(split, year)
        data = _load_json(self.ann_file)
        _check_entries(data, self.ann_file)
        _check_image_files(data["images"], self.image_dir, self.ann_file)
        if verify:
            verify_images(self.image_dir, [img["file_name"] for img in data["images"]], self.ann_file)
        # Older pycocotools' loadRes copies these keys unconditionally.
        data.setdefault("info", {})
        data.setdefault("licenses", [])
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.dropped_boxes = _report_dropped(self.coco, self.ann_file)

        cat_ids = sorted(self.coco.cats)
        self.num_classes = len(cat_ids)
        self.category_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self.label_to_category: dict[int, int] = {i + 1: cid for i, cid in enumerate(cat_ids)}
        self.category_names: list[str] = [str(self.coco.cats[cid]["name"]) for cid in cat_ids]

        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if len(self._annotations(i)[0]) > 0]
        self.ids: list[int] = ids

    def _locate(self, split: str, year: str) -> tuple[Path, Path]:
        """The annotation file and image directory of ``split``; DataError naming what is missing."""
        if not self.root.is_dir():
            raise DataError(f"data.root: directory {self.root} does not exist")
        ann_file = self.root / "annotations" / f"instances_{split}{year}.json"
        image_dir = self.root / f"{split}{year}"
        if not ann_file.is_file():
            raise DataError(
                f"annotation file {ann_file} does not exist (expected the COCO layout "
                f"<data.root>/annotations/instances_{split}{year}.json)"
            )
        if not image_dir.is_dir():
            raise DataError(f"image directory {image_dir} does not exist (split {split!r})")
        return ann_file, image_dir

    def _annotations(
        self, image_id: int, width: float | None = None, height: float | None = None
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Usable annotations of an image and their boxes, clipped to (width, height) or the JSON's size."""
        info = self.coco.imgs[image_id]
        if width is None or height is None:
            width, height = info.get("width"), info.get("height")
        return _valid_annotations(self.coco.imgToAnns.get(image_id, []), width, height)

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_groups(self) -> list[int]:
        """Per index, 1 when the image is wider than tall (width / height > 1), else 0.

        mmdetection's ``CustomDataset._set_group_flag`` rule (the groups of its GroupSampler and
        DistributedGroupSampler); read from the JSON's ``width`` / ``height``, no image is opened.
        """
        groups: list[int] = []
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            width, height = info.get("width"), info.get("height")
            if not isinstance(width, (int, float)) or not isinstance(height, (int, float)) or height <= 0:
                raise DataError(
                    f"annotation file {self.ann_file}: image id {image_id} ({info['file_name']}) needs positive "
                    f"'width' and 'height' to group batches by aspect ratio (data.group_by_aspect)"
                )
            groups.append(1 if width / height > 1 else 0)
        return groups

    def _masks(self, anns: list[dict[str, Any]], image_id: int, height: int, width: int) -> tv_tensors.Mask:
        """One uint8 [h, w] mask per annotation, decoded by pycocotools ``annToMask`` (polygons or RLE)."""
        masks = []
        for ann in anns:
            try:
                mask = self.coco.annToMask(ann)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise DataError(
                    f"annotation file {self.ann_file}: annotation id {ann['id']} (image id {image_id}) has no "
                    f"decodable 'segmentation' (needed for masks): {e!r}"
                ) from e
            if mask.shape != (height, width):
                raise DataError(
                    f"annotation file {self.ann_file}: annotation id {ann['id']} decodes to a {mask.shape[0]}x"
                    f"{mask.shape[1]} mask but image id {image_id} is {height}x{width} on disk"
                )
            masks.append(mask)
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
        return tv_tensors.Mask(torch.from_numpy(stacked.astype(np.uint8, copy=False)))

    def load(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        """The untransformed item ``index``: the RGB PIL image and its target (tv_tensors)."""
        image_id = self.ids[index]
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")  # grayscale and palette files become 3-channel
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        width, height = image.size
        anns, boxes = self._annotations(image_id, width, height)
        labels = [self.category_to_label[ann["category_id"]] for ann in anns]
        size = torch.tensor([height, width], dtype=torch.int64)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
            ),
            "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": int(image_id),
            "orig_size": size,
            "size": size.clone(),
        }
        if self.with_masks:
            target["masks"] = self._masks(anns, image_id, height, width)
        return image, target

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, dict[str, Any]]:
        index, sample_seed = _parse_item(item)
        image, target = self.load(index)
        if self.transforms is None:
            return image, target
        if sample_seed is None:
            image, target = self.transforms(image, target)
        else:
            # Only the CPU generator is forked and reseeded: torch.manual_seed would also reseed
            # (and leave changed) the CUDA generators, which fork_rng(devices=[]) does not restore.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed)
                image, target = self.transforms(image, target)
        # Keep ``size`` truthful even for transforms that do not maintain it.
        if isinstance(image, torch.Tensor):
            target["size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )
