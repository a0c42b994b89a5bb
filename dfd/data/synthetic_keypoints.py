"""A small synthetic person-keypoints set in the COCO 2017 layout (kind ``synthetic_keypoints``).

``generate_synthetic_keypoints(root)`` writes::

    root/annotations/person_keypoints_{train,val}2017.json
    root/{train,val}2017/<12-digit id>.jpg
    root/person_detection_results/synthetic_val_detections.json   (person boxes for the val crops)
    root/synthetic_keypoints.json                                  (stamp: generator version + parameters)

Each person is a stick figure facing the camera, with COCO's 17 joints and skeleton: the person's
left joints lie on the image's right, so a horizontal flip must swap left and right. Joints are dots
coloured by joint type (a left/right pair shares its colour: only the geometry tells them apart),
limbs thick lines, a filled torso and head; a figure's mask gives its ``area``, ``bbox`` and RLE
``segmentation``. COCO's quirks are present: joints outside the image are unlabelled (0, 0, 0),
joints under an occluder are labelled but not visible (v = 1), people annotated without keypoints
(``num_keypoints`` 0), crowd regions (``iscrowd`` 1, uncompressed RLE) and images with nobody.
The detection file holds jittered boxes of the val people with scores, a duplicate now and then
(for the OKS NMS) and a few low-scoring false positives.

Output is a pure function of the parameters; it is generated once into a cache directory and
installed atomically (as ``dfd/data/synthetic.py`` does for the detection set).
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .coco import DataError
from .keypoints import KEYPOINT_NAMES, SKELETON, KeypointsDataOptions, keypoint_options, keypoint_pair
from .synthetic import _uncompressed_rle

GENERATOR_NAME = "dfd.data.synthetic_keypoints"
GENERATOR_VERSION = 1
STAMP_NAME = "synthetic_keypoints.json"
DETECTIONS = "person_detection_results/synthetic_val_detections.json"
_ID_OFFSET = {"train": 0, "val": 1_000_000}
# One colour per joint type; a left/right pair shares it (indices: 0 nose, then pairs).
_PAIR_COLOURS = [(230, 30, 30), (30, 160, 40), (40, 60, 220), (200, 40, 200), (230, 140, 20), (20, 180, 190),
                 (120, 60, 20), (90, 90, 90), (250, 220, 30)]


def _joint_colour(j: int) -> tuple[int, int, int]:
    return _PAIR_COLOURS[0 if j == 0 else (j + 1) // 2]


def _params(seed: int, num_train: int, num_val: int, min_side: int, max_side: int) -> dict[str, int]:
    params = {"seed": int(seed), "num_train": int(num_train), "num_val": int(num_val), "min_side": int(min_side),
              "max_side": int(max_side)}
    if params["num_train"] < 4 or params["num_val"] < 4:
        raise DataError(f"data.keypoints.synthetic: num_train and num_val must be >= 4, got {num_train}, {num_val}")
    if params["min_side"] < 64 or params["max_side"] < params["min_side"]:
        raise DataError(f"data.keypoints.synthetic: need 64 <= min_side <= max_side, got {min_side}, {max_side}")
    return params


# --------------------------------------------------------------------------- one figure


def _pose(rng: np.random.Generator, height: float, x0: float, y0: float) -> np.ndarray:
    """17 joints [17, 2] of a figure of ``height`` px whose head top is at (x0, y0); +x is the person's left."""
    u = height
    pts = {0: (0.0, 0.07), 1: (0.03, 0.05), 2: (-0.03, 0.05), 3: (0.06, 0.07), 4: (-0.06, 0.07),
           5: (0.12, 0.19), 6: (-0.12, 0.19), 11: (0.08, 0.53), 12: (-0.08, 0.53)}
    out = np.zeros((17, 2))
    for j, (x, y) in pts.items():
        out[j] = (x * u, y * u)
    for side, sign in ((0, 1.0), (1, -1.0)):  # left (+x) and right (-x) limbs
        a1, a2 = math.radians(rng.uniform(-20, 110)), math.radians(rng.uniform(-30, 60))
        out[7 + side] = out[5 + side] + 0.17 * u * np.array([sign * math.sin(a1), math.cos(a1)])
        out[9 + side] = out[7 + side] + 0.15 * u * np.array([sign * math.sin(a1 + a2), math.cos(a1 + a2)])
        b1, b2 = math.radians(rng.uniform(-5, 30)), math.radians(rng.uniform(-25, 5))
        out[13 + side] = out[11 + side] + 0.23 * u * np.array([sign * math.sin(b1), math.cos(b1)])
        out[15 + side] = out[13 + side] + 0.23 * u * np.array([sign * math.sin(b1 + b2), math.cos(b1 + b2)])
    lean = math.radians(rng.uniform(-12, 12))
    rot = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])
    pivot = out[[11, 12]].mean(axis=0)
    return (out - pivot) @ rot.T + pivot + np.array([x0, y0])


def _draw_figure(image: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, joints: np.ndarray, height: float,
                 rng: np.random.Generator) -> None:
    """Torso, head, limbs and joint dots into ``image``; the same body (no dots) into ``mask``."""
    limb = max(2, int(round(0.05 * height)))
    torso = [tuple(joints[j]) for j in (5, 6, 12, 11)]
    cloth = tuple(int(v) for v in rng.integers(60, 150, size=3))
    head_c, head_r = joints[0], 0.075 * height
    head = [head_c[0] - head_r, head_c[1] - head_r, head_c[0] + head_r, head_c[1] + head_r]
    for draw, fill in ((image, cloth), (mask, 1)):
        draw.polygon(torso, fill=fill)
        draw.ellipse(head, fill=fill if draw is mask else (225, 190, 160))
        for a, b in SKELETON[:12]:  # the limbs and torso edges (the face edges are inside the head)
            draw.line([tuple(joints[a - 1]), tuple(joints[b - 1])], fill=fill, width=limb)
    dot = max(1.5, 0.03 * height)
    for j, (x, y) in enumerate(joints):
        image.ellipse([x - dot, y - dot, x + dot, y + dot], fill=_joint_colour(j))


def _annotation(joints: np.ndarray, body: np.ndarray, occluded: set[int], labelled: bool) -> dict[str, Any]:
    """A COCO person annotation from the figure's joints and its body mask [H, W] (bool)."""
    h, w = body.shape
    inside = (joints[:, 0] >= 0) & (joints[:, 0] <= w - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= h - 1)
    kps = []
    for j, (x, y) in enumerate(joints):
        v = 0 if not (labelled and inside[j]) else (1 if j in occluded else 2)
        kps += [round(float(x), 2), round(float(y), 2), v] if v else [0, 0, 0]
    rle = mask_utils.encode(np.asfortranarray(body.astype(np.uint8)))
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle).tolist()]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"category_id": 1, "iscrowd": 0, "segmentation": rle, "area": float(body.sum()), "bbox": bbox,
            "keypoints": kps, "num_keypoints": int(sum(1 for v in kps[2::3] if v > 0))}


# --------------------------------------------------------------------------- one image


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    base = rng.uniform(185, 215) + rng.uniform(-6, 6, size=3)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    theta, amp = rng.uniform(0, 2 * math.pi), rng.uniform(4, 12)
    ramp = ((xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)) / (0.5 * math.hypot(w, h))
    pixels = base[None, None, :] + (amp * ramp)[..., None] + rng.normal(0, 3, size=(h, w, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _person(rng: np.random.Generator, canvas: Image.Image, kind: str) -> dict[str, Any]:
    """Draw one person (``labelled``, ``unlabelled`` or ``occluded``) and return its annotation."""
    w, h = canvas.size
    height = float(rng.uniform(0.45, 0.9) * min(w, h)) if kind != "unlabelled" else float(rng.uniform(20, 32))
    x0 = float(rng.uniform(0.1 * w, 0.9 * w))
    y0 = float(rng.uniform(-0.05 * height, max(h - 0.95 * height, 1.0)))
    joints = _pose(rng, height, x0, y0)
    body = Image.new("L", (w, h), 0)
    _draw_figure(ImageDraw.Draw(canvas), ImageDraw.Draw(body), joints, height, rng)
    occluded: set[int] = set()
    if kind == "occluded":  # a grey board over one forearm: its wrist (and maybe elbow) labelled, not visible
        side = int(rng.integers(2))
        occluded = {9 + side} | ({7 + side} if rng.random() < 0.5 else set())
        pts = joints[sorted(occluded)]
        pad = 0.06 * height
        box = [pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad]
        ImageDraw.Draw(canvas).rectangle(box, fill=(150, 150, 150))
    return _annotation(joints, np.asarray(body) > 0, occluded, kind != "unlabelled")


def _crowd(rng: np.random.Generator, canvas: Image.Image) -> dict[str, Any]:
    """A cluster of small figures annotated as one crowd region (uncompressed RLE, no keypoints)."""
    w, h = canvas.size
    union = np.zeros((h, w), dtype=bool)
    cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.1 * h, 0.6 * h)
    for _ in range(int(rng.integers(3, 6))):
        height = float(rng.uniform(14, 20))
        joints = _pose(rng, height, cx + rng.uniform(-18, 18), cy + rng.uniform(-8, 8))
        body = Image.new("L", (w, h), 0)
        _draw_figure(ImageDraw.Draw(canvas), ImageDraw.Draw(body), joints, height, rng)
        union |= np.asarray(body) > 0
    rle = _uncompressed_rle(union)
    bbox = mask_utils.toBbox(mask_utils.frPyObjects(rle, h, w)).tolist()
    return {"category_id": 1, "iscrowd": 1, "segmentation": rle, "area": float(union.sum()),
            "bbox": [round(float(v), 2) for v in bbox], "keypoints": [0] * 51, "num_keypoints": 0}


def _image_kinds(i: int, rng: np.random.Generator) -> list[str]:
    """What image ``i`` holds: 0 nobody; 1 a crowd and a person; 2 an unlabelled and a labelled person;
    3 an occluded person; then 1-2 people, a quarter of them occluded."""
    fixed = {0: [], 1: ["crowd", "labelled"], 2: ["unlabelled", "labelled"], 3: ["occluded"]}
    if i in fixed:
        return fixed[i]
    return ["occluded" if rng.random() < 0.25 else "labelled" for _ in range(int(rng.integers(1, 3)))]


def _detections(rng: np.random.Generator, image: dict[str, Any], anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jittered boxes of the image's non-crowd people (a duplicate now and then) and maybe a false positive."""
    out = []

    def det(box, score):
        x, y, bw, bh = box
        x, y = min(max(x, 0.0), image["width"] - 2), min(max(y, 0.0), image["height"] - 2)
        bw, bh = max(2.0, min(bw, image["width"] - x)), max(2.0, min(bh, image["height"] - y))
        return {"image_id": image["id"], "category_id": 1, "bbox": [round(float(v), 2) for v in (x, y, bw, bh)],
                "score": round(float(score), 4)}

    for ann in anns:
        if ann["iscrowd"]:
            continue
        x, y, bw, bh = ann["bbox"]
        jitter = rng.normal(0, 0.05, size=4)
        box = (x + jitter[0] * bw, y + jitter[1] * bh, bw * math.exp(jitter[2]), bh * math.exp(jitter[3]))
        out.append(det(box, rng.uniform(0.6, 1.0)))
        if rng.random() < 0.3:
            out.append(det((box[0] + 0.04 * bw, box[1] + 0.04 * bh, box[2], box[3]), rng.uniform(0.3, 0.6)))
    if rng.random() < 0.3:
        s = rng.uniform(20, 50)
        out.append(det((rng.uniform(0, image["width"] - s), rng.uniform(0, image["height"] - s), s * 0.75, s),
                       rng.uniform(0.05, 0.3)))
    return out


def _write_split(root: Path, split: str, count: int, params: dict[str, int], index: int) -> list[dict[str, Any]]:
    """Images and json of one split; returns its detections."""
    (root / f"{split}2017").mkdir(parents=True)
    images, annotations, detections = [], [], []
    for i in range(count):
        rng = np.random.default_rng([params["seed"], index, i])
        h = int(rng.integers(params["min_side"], params["max_side"] + 1))
        w = int(rng.integers(params["min_side"], params["max_side"] + 1))
        image_id = _ID_OFFSET[split] + i + 1
        info = {"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w, "license": 0}
        canvas = _background(rng, h, w)
        anns = [_crowd(rng, canvas) if kind == "crowd" else _person(rng, canvas, kind) for kind in _image_kinds(i, rng)]
        canvas.save(root / f"{split}2017" / info["file_name"], format="JPEG", quality=92)
        images.append(info)
        for ann in anns:
            annotations.append({"id": _ID_OFFSET[split] + len(annotations) + 1, "image_id": image_id, **ann})
        detections += _detections(rng, info, anns)
    person = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
              "skeleton": [list(e) for e in SKELETON]}
    dataset = {"info": {"description": "DFD synthetic person keypoints, COCO 2017 layout", "version": str(GENERATOR_VERSION)},
               "licenses": [{"id": 0, "name": "synthetic", "url": ""}], "images": images, "annotations": annotations,
               "categories": [person]}
    (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(dataset), encoding="utf-8")
    return detections


# --------------------------------------------------------------------------- caching / install


def _stamp(params: dict[str, int]) -> dict[str, Any]:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params}


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    try:
        return json.loads((root / STAMP_NAME).read_text(encoding="utf-8")) == _stamp(params)
    except (OSError, ValueError):
        return False


def _generate(root: Path, params: dict[str, int]) -> Path:
    """Write into a temporary sibling, stamp it last, rename it into place (another writer's identical copy wins)."""
    if root.exists() and any(root.iterdir()) and not (root / STAMP_NAME).is_file():
        raise DataError(f"data.root: {root} is a non-empty directory without a {STAMP_NAME} stamp; refusing to "
                        "overwrite it with a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / "annotations").mkdir(parents=True)
        _write_split(tmp, "train", params["num_train"], params, 0)
        dets = _write_split(tmp, "val", params["num_val"], params, 1)
        (tmp / DETECTIONS).parent.mkdir(parents=True)
        (tmp / DETECTIONS).write_text(json.dumps(dets), encoding="utf-8")
        (tmp / STAMP_NAME).write_text(json.dumps(_stamp(params), sort_keys=True), encoding="utf-8")
        if root.exists():
            aside = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(root, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_complete(root, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_synthetic_keypoints(root: str | Path, **params: Any) -> Path:
    """``root``, generated first unless an identical set is already there."""
    p = _params(**params)
    root = Path(root)
    return root if _is_complete(root, p) else _generate(root, p)


def synthetic_keypoints_root(options: KeypointsDataOptions) -> Path:
    """``$DFD_CACHE/synthetic_keypoints/<digest of the generator parameters>`` (``$DFD_CACHE``: ``.cache``)."""
    params = _params(**vars(options.synthetic))
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(os.environ.get("DFD_CACHE", ".cache")) / "synthetic_keypoints" / tag


def _build_synthetic_keypoints(root: str | Path | None, needs: Any, **options: Any):
    """The synthetic set, generated on first use into ``root`` (default :func:`synthetic_keypoints_root`)."""
    opts = keypoint_options(options.get("keypoints"))
    if root is None or str(root) == "":
        root = synthetic_keypoints_root(opts)
    ensure_synthetic_keypoints(root, **vars(opts.synthetic))
    return keypoint_pair(root, opts, bool(options.get("verify_images", False)))


def _register() -> None:
    from .registry import DatasetEntry, register_dataset

    register_dataset(DatasetEntry(
        "synthetic_keypoints",
        "stick figures with COCO's 17 joints in the COCO 2017 person-keypoints layout, generated on first use",
        needs_root=False,
        builder=_build_synthetic_keypoints,
        pipelines=("topdown",),
        twin="coco_keypoints",
    ))


_register()
