"""A small, easy-to-learn synthetic detection dataset written in the real COCO 2017 layout.

``generate_synthetic_coco(root)`` writes::

    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/train2017/000000000001.jpg ...
    root/val2017/000001000001.jpg ...
    root/synthetic.json                      (stamp: generator version + parameters)

Each category is a distinct filled shape with a distinct base colour, drawn on a pale,
smooth background, so a tiny detector trained from scratch for a few hundred iterations
reaches a non-trivial AP. COCO's quirks are present on purpose: non-contiguous category
ids, crowd annotations (uncompressed RLE), images without annotations and single-channel
(grayscale) JPEGs. Object areas span COCO's small / medium / large ranges in both splits.

Output is a pure function of the parameters: the same parameters give byte-identical
JSON files and JPEGs.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .coco import DataError

GENERATOR_NAME = "dfd.data.synthetic"
# Bump whenever the output for a given set of parameters changes, so cached copies regenerate.
GENERATOR_VERSION = 1
STAMP_NAME = "synthetic.json"
YEAR = "2017"
JPEG_QUALITY = 90

# (category id, name, supercategory, shape, base RGB colour). Ids are deliberately
# non-contiguous, like COCO's. Colours are all clearly darker than the background,
# also after conversion to grayscale, so grayscale images stay learnable.
CATEGORIES: tuple[tuple[int, str, str, str, tuple[int, int, int]], ...] = (
    (1, "circle", "round", "circle", (205, 40, 40)),
    (3, "square", "angular", "square", (35, 150, 55)),
    (7, "triangle", "angular", "triangle", (45, 70, 215)),
    (12, "cross", "angular", "cross", (160, 45, 185)),
)

# Polygon area / bounding-box area for each shape (circle: a 32-gon).
_FILL = {
    "circle": 16 * math.sin(2 * math.pi / 32) / 4,  # (n/2) r² sin(2π/n) / (2r)², n = 32
    "square": 1.0,
    "triangle": 0.5,
    "cross": 1.0 - 4 * 0.3**2,  # arm thickness 0.4 of the side
}

# Target mask areas per COCO size class: small < 32², medium 32²..96², large > 96².
# The ranges keep a margin from the COCO thresholds so rasterisation never flips a class.
_AREA_RANGES = {"small": (12.0**2, 28.0**2), "medium": (36.0**2, 72.0**2), "large": (99.0**2, 116.0**2)}
_SIZE_PROBS = {"small": 0.40, "medium": 0.35, "large": 0.25}
_LARGE_IMAGE_PROB = 0.45  # chance that a non-empty, non-crowd image holds one large object
_MARGIN = 2  # px kept free at the image border
_GAP = 3  # px kept free between objects
_PLACEMENT_TRIES = 30
# Image ids / annotation ids start here per split (COCO ids are unique across splits).
_ID_OFFSET = {"train": 0, "val": 1_000_000}


def _params(
    seed: int, num_train: int, num_val: int, min_side: int, max_side: int, max_objects: int
) -> dict[str, int]:
    params = {
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "min_side": int(min_side),
        "max_side": int(max_side),
        "max_objects": int(max_objects),
    }
    if params["num_train"] < 1 or params["num_val"] < 1:
        raise DataError(f"data.synthetic: num_train and num_val must be >= 1, got {num_train}, {num_val}")
    if params["min_side"] < 32 or params["max_side"] < params["min_side"]:
        raise DataError(
            f"data.synthetic: need 32 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}"
        )
    if params["max_objects"] < 1:
        raise DataError(f"data.synthetic: max_objects must be >= 1, got {max_objects}")
    return params


def _stamp(params: dict[str, int]) -> dict[str, Any]:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params}


# --------------------------------------------------------------------------- shapes


def _shape_polygon(shape: str, x0: float, y0: float, s: float) -> list[float]:
    """Flat [x1, y1, x2, y2, ...] polygon of ``shape`` inscribed in the box (x0, y0, s, s)."""
    cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
    if shape == "circle":
        pts = [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]
    elif shape == "square":
        pts = [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    elif shape == "triangle":
        pts = [(cx, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    elif shape == "cross":
        a, b = cx - 0.2 * s, cx + 0.2 * s  # vertical arm
        c, d = cy - 0.2 * s, cy + 0.2 * s  # horizontal arm
        x1, y1 = x0 + s, y0 + s
        pts = [(a, y0), (b, y0), (b, c), (x1, c), (x1, d), (b, d), (b, y1), (a, y1), (a, d), (x0, d), (x0, c), (a, c)]
    else:  # pragma: no cover - CATEGORIES is fixed
        raise ValueError(f"unknown shape {shape!r}")
    return [round(v, 2) for p in pts for v in p]


def _rasterize(polygon: list[float], h: int, w: int) -> np.ndarray:
    """Rasterise with pycocotools, so the painted pixels are exactly the annotated mask."""
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))
    with warnings.catch_warnings():  # pycocotools vs numpy 2 "__array__ ... copy" deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (as used for crowd annotations): column-major run lengths, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


# --------------------------------------------------------------------------- one image


class _Canvas:
    """One image being drawn: pixels, occupied boxes and the annotations so far."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.boxes: list[tuple[float, float, float, float]] = []
        self.anns: list[dict[str, Any]] = []
        # Pale background with a slight tint and a gentle linear gradient.
        base = rng.uniform(178, 212) + rng.uniform(-6, 6, size=3)
        theta, amp = rng.uniform(0, 2 * math.pi), rng.uniform(4, 14)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = ((xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)) / (0.5 * math.hypot(w, h))
        self.pixels = base[None, None, :].astype(np.float32) + (amp * ramp)[..., None]

    def place(self, size: float) -> tuple[float, float] | None:
        """Top-left corner for a ``size`` x ``size`` box overlapping nothing placed so far."""
        hi_x, hi_y = self.w - _MARGIN - size, self.h - _MARGIN - size
        if hi_x < _MARGIN or hi_y < _MARGIN:
            return None
        for _ in range(_PLACEMENT_TRIES):
            x0, y0 = float(self.rng.uniform(_MARGIN, hi_x)), float(self.rng.uniform(_MARGIN, hi_y))
            if all(
                x0 + size + _GAP <= bx0 or bx1 + _GAP <= x0 or y0 + size + _GAP <= by0 or by1 + _GAP <= y0
                for bx0, by0, bx1, by1 in self.boxes
            ):
                self.boxes.append((x0, y0, x0 + size, y0 + size))
                return x0, y0
        return None

    def paint(self, mask: np.ndarray, color: tuple[int, int, int]) -> None:
        jitter = self.rng.uniform(-12, 12, size=3)
        self.pixels[mask] = np.asarray(color, dtype=np.float32) + jitter.astype(np.float32)

    def add_object(self, cat_index: int, area: float) -> bool:
        _, _, _, shape, color = CATEGORIES[cat_index]
        size = math.sqrt(area / _FILL[shape])
        corner = self.place(size)
        if corner is None:
            return False
        polygon = _shape_polygon(shape, corner[0], corner[1], size)
        mask = _rasterize(polygon, self.h, self.w)
        self.paint(mask, color)
        xs, ys = polygon[0::2], polygon[1::2]
        x0, y0 = min(xs), min(ys)
        self.anns.append(
            {
                "category_id": CATEGORIES[cat_index][0],
                "segmentation": [polygon],
                "area": float(mask.sum()),
                "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
                "iscrowd": 0,
            }
        )
        return True

    def add_crowd(self, cat_index: int) -> bool:
        """A tight cluster of small same-category shapes, annotated as one crowd region."""
        _, _, _, shape, color = CATEGORIES[cat_index]
        region = float(self.rng.uniform(34, 52))
        corner = self.place(region)
        if corner is None:
            return False
        union = np.zeros((self.h, self.w), dtype=bool)
        for _ in range(int(self.rng.integers(5, 10))):
            s = float(self.rng.uniform(8, 14))
            x0 = corner[0] + float(self.rng.uniform(0, region - s))
            y0 = corner[1] + float(self.rng.uniform(0, region - s))
            mask = _rasterize(_shape_polygon(shape, x0, y0, s), self.h, self.w)
            self.paint(mask, color)
            union |= mask
        rle = _uncompressed_rle(union)
        bbox = mask_utils.toBbox(mask_utils.frPyObjects(rle, self.h, self.w)).tolist()
        self.anns.append(
            {
                "category_id": CATEGORIES[cat_index][0],
                "segmentation": rle,
                "area": float(union.sum()),
                "bbox": [round(float(v), 2) for v in bbox],
                "iscrowd": 1,
            }
        )
        return True

    def finish(self) -> np.ndarray:
        noise = self.rng.normal(0.0, 3.0, size=self.pixels.shape).astype(np.float32)
        return np.clip(np.rint(self.pixels + noise), 0, 255).astype(np.uint8)


def _size_classes(rng: np.random.Generator, n: int, *, large: bool, forced: str | None) -> list[str]:
    """Size class per object: at most one large (first), the rest small or medium (40 : 35)."""
    classes: list[str] = ["large"] if large else []
    if forced in ("small", "medium"):
        classes.append(forced)
    while len(classes) < n:
        classes.append("small" if rng.random() < _SIZE_PROBS["small"] / (1 - _SIZE_PROBS["large"]) else "medium")
    return classes


def _draw_image(
    rng: np.random.Generator, h: int, w: int, *, n_objects: int, crowd: bool, forced: str | None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    canvas = _Canvas(rng, h, w)
    if n_objects == 0:
        return canvas.finish(), canvas.anns
    # A large object leaves little room, so decide per image (crowd images get none) rather
    # than per object; this keeps large objects near a quarter of all annotations.
    large = forced == "large" or (forced is None and not crowd and rng.random() < _LARGE_IMAGE_PROB)
    classes = _size_classes(rng, n_objects, large=large, forced=forced)
    # Place big things first: they need the most free space.
    classes.sort(key={"large": 0, "medium": 1, "small": 2}.__getitem__)
    if large:
        side = min(h, w) - 2 * _MARGIN
        fits = [i for i, c in enumerate(CATEGORIES) if _FILL[c[3]] * side**2 >= _AREA_RANGES["large"][0]]
        if fits:
            cat = fits[int(rng.integers(len(fits)))]
            hi = min(_AREA_RANGES["large"][1], _FILL[CATEGORIES[cat][3]] * side**2)
            canvas.add_object(cat, float(rng.uniform(_AREA_RANGES["large"][0], hi)))
        classes = classes[1:]
    if crowd:
        canvas.add_crowd(int(rng.integers(len(CATEGORIES))))
    for size_class in classes:
        lo, hi = _AREA_RANGES[size_class]
        area = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        canvas.add_object(int(rng.integers(len(CATEGORIES))), area)
    return canvas.finish(), canvas.anns


# --------------------------------------------------------------------------- one split


def _write_split(root: Path, split: str, num_images: int, params: dict[str, int], split_index: int) -> None:
    image_dir = root / f"{split}{YEAR}"
    image_dir.mkdir(parents=True)
    plan = np.random.default_rng([params["seed"], split_index, 0])
    # Quirk images: a few empty, a few with a crowd region (disjoint from the empty ones),
    # a few grayscale (any image).
    n_quirk = max(1, num_images // 32)
    perm = plan.permutation(num_images)
    empty = set(perm[:n_quirk].tolist())
    crowd = set(perm[n_quirk : 2 * n_quirk].tolist())
    gray = set(plan.choice(num_images, size=n_quirk, replace=False).tolist())
    # The first three non-empty images start with a large, a medium and a small object, so
    # every split (even a tiny one) covers all three COCO size ranges.
    forced_classes = iter(("large", "medium", "small"))

    offset = _ID_OFFSET[split]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(num_images):
        rng = np.random.default_rng([params["seed"], split_index, 1, i])
        h = int(rng.integers(params["min_side"], params["max_side"] + 1))
        w = int(rng.integers(params["min_side"], params["max_side"] + 1))
        image_id = offset + i + 1
        file_name = f"{image_id:012d}.jpg"
        if i in empty:
            n_objects, forced = 0, None
        else:
            n_objects = int(rng.integers(1, params["max_objects"] + 1))
            forced = next(forced_classes, None)
        pixels, anns = _draw_image(rng, h, w, n_objects=n_objects, crowd=i in crowd, forced=forced)
        image = Image.fromarray(pixels)  # uint8 [H, W, 3] -> RGB
        if i in gray:
            image = image.convert("L")
        image.save(image_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 0})
        for ann in anns:
            annotations.append({"id": offset + len(annotations) + 1, "image_id": image_id, **ann})

    dataset = {
        "info": {
            "description": "DFD synthetic shapes, COCO 2017 layout",
            "version": str(GENERATOR_VERSION),
            "year": int(YEAR),
            "contributor": GENERATOR_NAME,
        },
        "licenses": [{"id": 0, "name": "synthetic", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup, _, _ in CATEGORIES],
    }
    (root / "annotations" / f"instances_{split}{YEAR}.json").write_text(
        json.dumps(dataset, separators=(",", ":")), encoding="utf-8"
    )


# --------------------------------------------------------------------------- caching / install


def _read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    """True when ``root`` holds a finished dataset generated with exactly these parameters."""
    if _read_stamp(root) != _stamp(params):
        return False
    for split, count in (("train", params["num_train"]), ("val", params["num_val"])):
        if not (root / "annotations" / f"instances_{split}{YEAR}.json").is_file():
            return False
        try:
            n = sum(1 for e in os.scandir(root / f"{split}{YEAR}") if e.name.endswith(".jpg"))
        except OSError:
            return False
        if n != count:
            return False
    return True


def _check_replaceable(root: Path) -> None:
    """Refuse to touch a directory this generator did not write (e.g. a real COCO copy)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"data.root: {root} exists and is not a directory")
    stamp = _read_stamp(root)
    owned = stamp is not None and stamp.get("generator") == GENERATOR_NAME
    if not owned and any(root.iterdir()):
        raise DataError(
            f"data.root: {root} is a non-empty directory without a {STAMP_NAME} stamp; refusing to "
            "overwrite it with a synthetic dataset (point data.root at an empty or new directory)"
        )


def _install(tmp: Path, root: Path, params: dict[str, int], *, replace_matching: bool) -> None:
    """Atomically move the finished ``tmp`` directory to ``root``.

    A stale ``root`` is first renamed aside. If another process installs a dataset while
    we do, and it matches our parameters, we keep theirs (generation is deterministic, so
    the content is identical) and discard ours.
    """
    trash: list[Path] = []
    try:
        for attempt in range(5):
            if root.exists():
                if _is_complete(root, params) and not (replace_matching and attempt == 0):
                    return
                _check_replaceable(root)
                aside = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(root, aside)
                    trash.append(aside)
                except FileNotFoundError:
                    pass  # another process moved it first
            try:
                os.rename(tmp, root)  # atomic; fails if root reappeared (non-empty)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise DataError(f"data.root: could not install the synthetic dataset at {root} (concurrent writers?)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op when the rename succeeded
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)


def _generate(root: Path, params: dict[str, int], *, replace_matching: bool) -> Path:
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / "annotations").mkdir(parents=True)
        _write_split(tmp, "train", params["num_train"], params, 0)
        _write_split(tmp, "val", params["num_val"], params, 1)
        # The stamp goes last: a directory with a matching stamp is a finished one.
        (tmp / STAMP_NAME).write_text(json.dumps(_stamp(params), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _install(tmp, root, params, replace_matching=replace_matching)
    return root


def generate_synthetic_coco(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = 256,
    num_val: int = 64,
    min_side: int = 128,
    max_side: int = 160,
    max_objects: int = 5,
) -> Path:
    """(Re)generate the synthetic dataset at ``root`` and return ``root``.

    Writes into a temporary sibling directory and renames it into place. Refuses to
    replace a non-empty directory that carries no stamp of this generator.
    """
    params = _params(seed, num_train, num_val, min_side, max_side, max_objects)
    return _generate(Path(root), params, replace_matching=True)


def ensure_synthetic_coco(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = 256,
    num_val: int = 64,
    min_side: int = 128,
    max_side: int = 160,
    max_objects: int = 5,
) -> Path:
    """Return ``root``, generating the dataset first unless an identical one is already there."""
    params = _params(seed, num_train, num_val, min_side, max_side, max_objects)
    root = Path(root)
    if _is_complete(root, params):
        return root
    return _generate(root, params, replace_matching=False)
