"""A small synthetic street-scene set in the Cityscapes layout (``data.kind=synthetic_cityscapes``).

``generate_synthetic_cityscapes(root)`` writes::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png   RGB
    root/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png    L, Cityscapes label ids
    root/synthetic_cityscapes.json                                                (stamp: generator + parameters)

Each scene is sky above a horizon, buildings and vegetation along it, road with cars below, a
sidewalk with people and poles, and the ignored ids of real Cityscapes labels: the ego vehicle (1)
at the bottom, a rectification border (2) on the left, unlabeled (0) and static (4) patches. Each
label id has its own base colour with texture noise, so a tiny network learns it from scratch.
One training image holds ignored ids only. The output is a pure function of the parameters; a
finished directory carries a stamp and is installed by an atomic rename.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .coco import DataError

GENERATOR_NAME = "dfd.data.synthetic_cityscapes"
GENERATOR_VERSION = 1
STAMP_NAME = "synthetic_cityscapes.json"
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau")}

# label id -> base RGB (Cityscapes' own palette where it has one; the ignored ids get dark tones).
COLORS = {
    0: (20, 20, 20), 1: (60, 40, 60), 2: (0, 0, 0), 4: (110, 90, 40),
    7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 17: (153, 153, 153), 20: (220, 220, 0),
    21: (107, 142, 35), 23: (70, 130, 180), 24: (220, 20, 60), 26: (0, 0, 142),
}


def _params(seed: int, num_train: int, num_val: int, height: int, width: int) -> dict[str, int]:
    params = {"seed": int(seed), "num_train": int(num_train), "num_val": int(num_val), "height": int(height), "width": int(width)}
    for key in ("num_train", "num_val"):
        if params[key] < 1:
            raise DataError(f"data.segmentation.synthetic.{key}={params[key]} is invalid: expected at least 1")
    if params["height"] < 32 or params["width"] < 32:
        raise DataError(f"data.segmentation.synthetic: images of {height}x{width} are too small (at least 32x32)")
    return params


def synthetic_cityscapes_root(params: dict[str, Any]) -> Path:
    """``$DFD_CACHE/synthetic_cityscapes/<digest of the parameters>`` (``$DFD_CACHE`` defaults to ``.cache``)."""
    tag = hashlib.sha256(json.dumps(_params(**params), sort_keys=True).encode()).hexdigest()[:10]
    return Path(os.environ.get("DFD_CACHE", ".cache")) / "synthetic_cityscapes" / tag


def _stamp(params: dict[str, int]) -> dict[str, Any]:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params}


# ----------------------------------------------------------------------------- one scene


def _rect(ids: np.ndarray, label: int, y0: float, y1: float, x0: float, x1: float) -> None:
    h, w = ids.shape
    ids[max(int(y0), 0):min(int(y1), h), max(int(x0), 0):min(int(x1), w)] = label


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label ids [h, w] of one street scene."""
    ids = np.full((h, w), 23, dtype=np.uint8)  # sky
    horizon = int(h * rng.uniform(0.35, 0.5))
    x = 0.0
    while x < w:  # buildings and trees along the horizon
        width = rng.uniform(0.1, 0.25) * w
        top = horizon - rng.uniform(0.15, 0.3) * h
        _rect(ids, 11 if rng.random() < 0.65 else 21, top, horizon, x, x + width)
        x += width
    _rect(ids, 7, horizon, h, 0, w)  # road
    walk = rng.uniform(0.15, 0.3) * w
    _rect(ids, 8, horizon, h, w - walk, w)  # sidewalk on the right
    for _ in range(int(rng.integers(1, 4))):  # cars on the road
        cw, ch = rng.uniform(0.12, 0.22) * w, rng.uniform(0.1, 0.18) * h
        cx, cy = rng.uniform(0, w - walk - cw), rng.uniform(horizon, h * 0.8 - ch)
        _rect(ids, 26, cy, cy + ch, cx, cx + cw)
    for _ in range(int(rng.integers(1, 3))):  # people and a pole with a sign on the sidewalk
        px, py = rng.uniform(w - walk, w - 0.03 * w), rng.uniform(horizon, h * 0.7)
        _rect(ids, 24, py, py + 0.18 * h, px, px + 0.03 * w)
    pole_x = w - walk + 0.02 * w
    _rect(ids, 17, horizon - 0.2 * h, horizon + 0.1 * h, pole_x, pole_x + max(2, 0.012 * w))
    _rect(ids, 20, horizon - 0.26 * h, horizon - 0.18 * h, pole_x - 0.02 * w, pole_x + 0.03 * w)
    for label in (0, 4):  # ignored patches
        py, px = rng.uniform(0, h - 8), rng.uniform(0, w - 8)
        _rect(ids, label, py, py + rng.uniform(4, 0.1 * h), px, px + rng.uniform(4, 0.1 * w))
    _rect(ids, 1, h - max(3, 0.08 * h), h, 0, w)  # ego vehicle
    _rect(ids, 2, 0, h, 0, 2)  # rectification border
    return ids


def _ignored_only(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label ids of an image with ignored ids only (0, 1, 4)."""
    ids = np.zeros((h, w), dtype=np.uint8)
    _rect(ids, 1, h // 2, h, 0, w)
    _rect(ids, 4, 0, h // 2, int(rng.uniform(0, w // 2)), w)
    return ids


def _paint(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    """RGB uint8 [h, w, 3]: each label id's colour, a per-image tint and pixel noise."""
    palette = np.zeros((256, 3), dtype=np.float32)
    for label, color in COLORS.items():
        palette[label] = color
    tint = rng.uniform(-10, 10, size=3).astype(np.float32)
    noise = rng.normal(0.0, 8.0, size=(*ids.shape, 3)).astype(np.float32)
    return np.clip(np.rint(palette[ids] + tint + noise), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- files


def _write_split(root: Path, split: str, count: int, params: dict[str, int], split_index: int) -> None:
    cities = CITIES[split]
    for i in range(count):
        rng = np.random.default_rng([params["seed"], split_index, i])
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_000019"
        quirk = split == "train" and i == count - 1 and count > 1
        ids = _ignored_only(rng, params["height"], params["width"]) if quirk else _scene(rng, params["height"], params["width"])
        for top, name, array in (("leftImg8bit", f"{stem}_leftImg8bit.png", _paint(rng, ids)),
                                 ("gtFine", f"{stem}_gtFine_labelIds.png", ids)):
            folder = root / top / split / city
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / name, format="PNG")


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    try:
        stamp = json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == _stamp(params)


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a non-empty directory this generator did not write (e.g. a real Cityscapes copy)."""
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / STAMP_NAME).is_file())):
        raise DataError(f"data.root: {root} exists and holds no {STAMP_NAME} stamp; refusing to overwrite it with a "
                        "synthetic dataset (point data.root at an empty or new directory)")


def _install(tmp: Path, root: Path, params: dict[str, int]) -> None:
    """Rename the finished ``tmp`` to ``root`` atomically; a stale ``root`` is moved aside first, and a
    matching one installed meanwhile by another process is kept (the content is identical)."""
    trash: list[Path] = []
    try:
        for _ in range(5):
            if root.exists():
                if _is_complete(root, params):
                    return
                _check_replaceable(root)
                aside = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(root, aside)
                    trash.append(aside)
                except FileNotFoundError:
                    pass
            try:
                os.rename(tmp, root)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise DataError(f"data.root: could not install the synthetic dataset at {root} (concurrent writers?)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)


def ensure_synthetic_cityscapes(root: str | Path, *, seed: int = 0, num_train: int = 24, num_val: int = 8,
                                height: int = 128, width: int = 256) -> Path:
    """Return ``root``, generating the set there first unless an identical one is already installed."""
    params = _params(seed, num_train, num_val, height, width)
    root = Path(root)
    if _is_complete(root, params):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _write_split(tmp, "train", params["num_train"], params, 0)
        _write_split(tmp, "val", params["num_val"], params, 1)
        (tmp / STAMP_NAME).write_text(json.dumps(_stamp(params), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _install(tmp, root, params)
    return root
