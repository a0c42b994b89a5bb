"""COCO person keypoints, top-down: one item per person crop, with heatmap targets (Table 7, pose).

The ``topdown`` pipeline of mmpose 0.29's ``TopDownCocoDataset`` and the train/val pipelines of
``res50_coco_256x192.py`` (PROTOCOLS.md §7), written with torch:

* training crops: every non-crowd person of ``person_keypoints_train2017.json`` with a usable box
  and at least one labelled joint (mmpose skips ``max(keypoints) == 0`` and ``num_keypoints == 0``);
* evaluation crops: the person boxes of a detection results file (``data.keypoints.person_boxes``,
  scores ≥ ``det_bbox_thr``), or the ground-truth boxes with ``use_gt_boxes_val``;
* crop: box → centre and size fixed to the input's aspect ratio, times ``padding`` (mmpose's
  ``bbox_xywh2cs``); then the random shift, flip (joints mirrored, left/right swapped), half-body,
  scale and rotation of the training pipeline; one affine warp (bilinear, zero border, cv2's
  pixel-centre convention) to ``input_size``;
* targets: a Gaussian (σ = ``sigma``) per joint at ``heatmap_size`` and a per-joint weight (mmpose's
  'MSRA' ``TopDownGenerateTarget``).

``ds[index]`` / ``ds[index, sample_seed]`` is ``(image, target)``: image float32 [3, H, W] in [0, 1];
target ``heatmaps`` [K, h, w], ``target_weight`` [K], ``joints`` [K, 3] (x, y in the crop, visibility
0/1), ``image_id``, ``crop_id``, ``box_score``, ``area`` (the padded box's w·h, mmpose's OKS-NMS
area), ``crop_to_image`` float64 [2, 3] (crop pixels → image pixels), ``flip_pairs`` int64 [P, 2],
``size`` and ``orig_size``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .coco import DataError, _check_entries, _check_image_files, _finite_box, _load_json, _parse_item, verify_images
from .options import parse_options

# COCO's 17 person joints, their skeleton (1-based, as in the json), mirror pairs and OKS sigmas.
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
            (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
COCO_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
               0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
UPPER_BODY_IDS = tuple(range(11))  # nose .. wrists (mmpose's coco.py ``upper_body_ids``)


def flip_pairs(names: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
    """Index pairs (left_x, right_x) of the joint names."""
    return [(i, names.index("right_" + n[5:])) for i, n in enumerate(names)
            if n.startswith("left_") and "right_" + n[5:] in names]


@dataclass
class SyntheticKeypointsOptions:
    """Parameters of the synthetic_keypoints generator (dfd/data/synthetic_keypoints.py)."""

    seed: int = 0
    num_train: int = 64
    num_val: int = 16
    min_side: int = 112
    max_side: int = 144


@dataclass
class KeypointsDataOptions:
    """``data.keypoints``: the top-down pipeline; defaults are mmpose 0.29's ``res50_coco_256x192.py``.

    input_size, heatmap_size: [height, width] of the crop and of its heatmaps (256x192, 64x48).
    sigma: the targets' Gaussian σ in heatmap pixels (2).
    person_boxes: the detection results file of the val crops (COCO results json, category 1); a
        relative path is under ``data.root`` (mmpose: ``data/coco/person_detection_results/...``).
    det_bbox_thr: detections below this score are dropped (0). use_gt_boxes_val: val crops from the
        ground-truth boxes instead (mmpose's ``use_gt_bbox``; False in the protocol).
    padding: box padding (1.25). shift_factor, shift_prob: random centre shift (0.16 of the box, p 0.3).
    flip_prob (0.5). half_body_prob, half_body_joints: half-body crop (p 0.3, more than 8 labelled joints).
    scale_factor: scale ~ clip(N(1, sf), 1 − sf, 1 + sf) (0.5). rot_factor, rot_prob: rotation ~
        clip(N(0, rf), −2rf, 2rf) degrees with probability rot_prob (40, 0.6: mmpose's default).
    oks_thr, vis_thr: OKS-NMS threshold (0.9) and the joint score above which a joint counts in the
        rescoring (0.2).
    synthetic: the generator's parameters (synthetic_keypoints only).
    """

    input_size: List[int] = field(default_factory=lambda: [256, 192])
    heatmap_size: List[int] = field(default_factory=lambda: [64, 48])
    sigma: float = 2.0
    person_boxes: Optional[str] = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"
    det_bbox_thr: float = 0.0
    use_gt_boxes_val: bool = False
    padding: float = 1.25
    shift_factor: float = 0.16
    shift_prob: float = 0.3
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_joints: int = 8
    scale_factor: float = 0.5
    rot_factor: float = 40.0
    rot_prob: float = 0.6
    oks_thr: float = 0.9
    vis_thr: float = 0.2
    synthetic: SyntheticKeypointsOptions = field(default_factory=SyntheticKeypointsOptions)


def keypoint_options(values: Any) -> KeypointsDataOptions:
    """``data.keypoints`` (a dict or the dataclass) as the dataclass, checked; DataError naming the key."""
    opts = parse_options(values, KeypointsDataOptions, "data.keypoints")
    for key in ("input_size", "heatmap_size"):
        value = list(getattr(opts, key))
        if len(value) != 2 or any(int(v) <= 0 for v in value):
            raise DataError(f"data.keypoints.{key}={value!r} is invalid: expected [height, width], two positive ints")
    for key in ("sigma", "padding"):
        if getattr(opts, key) <= 0:
            raise DataError(f"data.keypoints.{key}={getattr(opts, key)!r} is invalid: expected a positive number")
    for key in ("shift_prob", "flip_prob", "half_body_prob", "rot_prob", "oks_thr", "vis_thr"):
        if not 0 <= getattr(opts, key) <= 1:
            raise DataError(f"data.keypoints.{key}={getattr(opts, key)!r} is invalid: expected a number in [0, 1]")
    if not 0 <= opts.scale_factor < 1:
        raise DataError(f"data.keypoints.scale_factor={opts.scale_factor!r} is invalid: expected a number in [0, 1)")
    return opts


# --------------------------------------------------------------------------- geometry


def box_center_size(bbox: Any, aspect: float, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's ``bbox_xywh2cs`` in pixels: c = (x + w/2, y + h/2); (w, h) widened to w/h = aspect, × padding."""
    x, y, w, h = (float(v) for v in bbox[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float64) * padding


def crop_matrix(center: np.ndarray, size: np.ndarray, rotation: float, out_wh: tuple[int, int]) -> np.ndarray:
    """mmpose's ``get_affine_transform`` (no UDP) as a 3x3 matrix, image pixels → crop pixels:

    p' = s · R(−θ) · (p − c) + (W/2, H/2),  s = W / w,  R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]

    (a similarity: only the box width sets the scale; θ = ``rotation`` in degrees).
    """
    s = out_wh[0] / float(size[0])
    t = math.radians(rotation)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) * s
    out = np.eye(3)
    out[:2, :2] = rot
    out[:2, 2] = np.array([out_wh[0] * 0.5, out_wh[1] * 0.5]) - rot @ center
    return out


def warp(image: Tensor, matrix: np.ndarray, out_hw: tuple[int, int]) -> Tensor:
    """Warp ``image`` [C, H, W] by ``matrix`` (3x3, image → output pixels) to ``out_hw``.

    Bilinear, zeros outside, integer coordinates at pixel centres: out(x, y) = image(M⁻¹ (x, y)), as
    cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0). grid_sample with align_corners=True reads pixel
    i at −1 + 2i / (W − 1).
    """
    _, h, w = image.shape
    inv = torch.as_tensor(np.linalg.inv(matrix), dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(out_hw[0], dtype=torch.float32), torch.arange(out_hw[1], dtype=torch.float32),
                            indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([sx * 2 / max(w - 1, 1) - 1, sy * 2 / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(image[None].float(), grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [K, 2] through the 3x3 affine ``matrix``."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def gaussian_targets(joints: np.ndarray, visible: np.ndarray, input_hw: tuple[int, int], heatmap_hw: tuple[int, int],
                     sigma: float) -> tuple[Tensor, Tensor]:
    """mmpose's 'MSRA' targets: per joint k with v_k > 0, μ = int(p / stride + 0.5) (truncated), and

    y_k(x, y) = exp(−((x − μx)² + (y − μy)²) / (2σ²))  for |x − μx| ≤ 3σ and |y − μy| ≤ 3σ, else 0;
    w_k = 1 if v_k > 0 and the 3σ window [μ − 3σ, μ + 3σ + 1) meets the heatmap, else 0.
    """
    hh, hw = heatmap_hw
    stride = np.array([input_hw[1] / hw, input_hw[0] / hh])
    mu = np.trunc(joints[:, :2] / stride + 0.5)
    radius = sigma * 3
    lo, hi = np.trunc(mu - radius), np.trunc(mu + radius + 1)
    outside = (lo[:, 0] >= hw) | (lo[:, 1] >= hh) | (hi[:, 0] < 0) | (hi[:, 1] < 0)
    weight = ((visible > 0) & ~outside).astype(np.float32)
    mu_t = torch.as_tensor(mu, dtype=torch.float32)
    xs = torch.arange(hw, dtype=torch.float32)[None, None, :] - mu_t[:, 0, None, None]
    ys = torch.arange(hh, dtype=torch.float32)[None, :, None] - mu_t[:, 1, None, None]
    window = (xs.abs() <= math.floor(radius)) & (ys.abs() <= math.floor(radius))
    maps = torch.exp(-(xs**2 + ys**2) / (2 * sigma**2)) * window
    w = torch.as_tensor(weight)
    return maps * w[:, None, None], w


# --------------------------------------------------------------------------- augmentation


def _rand(gen: torch.Generator, n: int = 1) -> np.ndarray:
    return torch.rand(n, generator=gen, dtype=torch.float64).numpy()


def _randn(gen: torch.Generator) -> float:
    return float(torch.randn(1, generator=gen, dtype=torch.float64))


def half_body(joints: np.ndarray, visible: np.ndarray, aspect: float, gen: torch.Generator,
              upper_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """mmpose's ``half_body_transform``: the box of the upper (if N(0,1) < 0.5 and more than 2 joints) or
    lower body's labelled joints, widened to ``aspect``, × 1.5; None with fewer than 2 joints."""
    labelled = np.flatnonzero(visible > 0)
    upper = [j for j in labelled if j in upper_ids]
    lower = [j for j in labelled if j not in upper_ids]
    if _randn(gen) < 0.5 and len(upper) > 2:
        chosen = upper
    elif len(lower) > 2:
        chosen = lower
    else:
        chosen = upper
    if len(chosen) < 2:
        return None
    pts = joints[chosen, :2]
    center = pts.mean(axis=0)
    w, h = pts.max(axis=0) - pts.min(axis=0)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h]) * 1.5


def augment(rec: dict[str, Any], image_width: int, opts: KeypointsDataOptions, pairs: list[tuple[int, int]],
            gen: torch.Generator) -> tuple[np.ndarray, np.ndarray, float, bool, np.ndarray]:
    """The training pipeline's random draws, in mmpose's order: shift, flip, half body, scale, rotation.

    Returns centre, size, rotation (degrees), whether flipped, and the joints [K, 3] (mirrored and
    swapped when flipped: x' = W − 1 − x, as ``fliplr_joints``).
    """
    aspect = opts.input_size[1] / opts.input_size[0]
    center, size = box_center_size(rec["bbox"], aspect, opts.padding)
    joints = rec["joints"].copy()
    if _rand(gen)[0] < opts.shift_prob:
        center = center + (_rand(gen, 2) * 2 - 1) * opts.shift_factor * size
    flipped = bool(_rand(gen)[0] <= opts.flip_prob) if opts.flip_prob > 0 else False
    if flipped:
        order = list(range(len(joints)))
        for a, b in pairs:
            order[a], order[b] = b, a
        joints = joints[order]
        joints[:, 0] = np.where(joints[:, 2] > 0, image_width - 1 - joints[:, 0], joints[:, 0])
        center = np.array([image_width - 1 - center[0], center[1]])
    if (joints[:, 2] > 0).sum() > opts.half_body_joints and _rand(gen)[0] < opts.half_body_prob:
        got = half_body(joints, joints[:, 2], aspect, gen, UPPER_BODY_IDS)
        if got is not None:
            center, size = got
    sf, rf = opts.scale_factor, opts.rot_factor
    size = size * float(np.clip(_randn(gen) * sf + 1, 1 - sf, 1 + sf))
    rotation = float(np.clip(_randn(gen) * rf, -2 * rf, 2 * rf))
    rotation = rotation if _rand(gen)[0] <= opts.rot_prob else 0.0
    return center, size, rotation, flipped, joints


# --------------------------------------------------------------------------- annotations


def _check_keypoint_json(data: dict[str, Any], ann_file: Path) -> tuple[int, list[str]]:
    """The person category's id and joint names; DataError naming the key or entry at fault."""
    people = [c for c in data["categories"] if isinstance(c, dict) and "keypoints" in c]
    if not people:
        raise DataError(f"annotation file {ann_file}: no category has a 'keypoints' list (expected COCO's person)")
    names = people[0]["keypoints"]
    if not isinstance(names, list) or not names:
        raise DataError(f"annotation file {ann_file}: categories[...]['keypoints'] must be a non-empty list of joint names")
    for i, img in enumerate(data["images"]):
        if not all(isinstance(img.get(k), (int, float)) and img[k] > 0 for k in ("width", "height")):
            raise DataError(f"annotation file {ann_file}: images[{i}] (id {img.get('id')}) needs positive 'width' and 'height'")
    for i, ann in enumerate(data["annotations"]):
        if ann.get("iscrowd", 0) or "keypoints" not in ann:
            continue  # mmpose skips crowd regions and annotations without keypoints
        kp = ann["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * len(names):
            raise DataError(f"annotation file {ann_file}: annotations[{i}] (id {ann['id']}) 'keypoints' must be a list of "
                            f"{3 * len(names)} numbers (x, y, v per joint of {len(names)})")
    return int(people[0]["id"]), list(names)


def _clean_box(ann: dict[str, Any], width: float, height: float) -> list[float] | None:
    """mmpose's box sanitising: clipped to the image (x2 ≤ W − 1), kept when non-empty and area > 0."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1, x1 + max(0.0, w)), min(height - 1, y1 + max(0.0, h))
    if ("area" not in ann or ann["area"] > 0) and x2 > x1 and y2 > y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


def gt_records(coco: COCO, image_ids: list[int], num_joints: int) -> list[dict[str, Any]]:
    """One record per non-crowd person with a usable box and at least one labelled joint (mmpose)."""
    records = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) or "keypoints" not in ann:
                continue
            box = _clean_box(ann, info["width"], info["height"])
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_joints, 3)
            if box is None or kp.max() == 0 or ann.get("num_keypoints", 1) == 0:
                continue
            joints = kp.copy()
            joints[:, 2] = np.minimum(1, kp[:, 2])
            records.append({"image_id": image_id, "bbox": box, "joints": joints, "box_score": 1.0})
    return records


def detection_records(path: Path, coco: COCO, person_id: int, thr: float, num_joints: int) -> list[dict[str, Any]]:
    """One record per person detection of the results file ``path`` scoring at least ``thr``."""
    try:
        dets = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"data.keypoints.person_boxes: {path} cannot be read as JSON: {err}") from err
    if not isinstance(dets, list) or not dets:
        raise DataError(f"data.keypoints.person_boxes: {path} must be a non-empty JSON list of detections")
    records = []
    for i, det in enumerate(dets):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if not isinstance(det, dict) or k not in det]
        if missing:
            raise DataError(f"data.keypoints.person_boxes: {path} entry [{i}] lacks {', '.join(map(repr, missing))}")
        if det["image_id"] not in coco.imgs:
            raise DataError(f"data.keypoints.person_boxes: {path} entry [{i}] has image_id {det['image_id']!r}, "
                            "which the val annotation file does not list")
        bbox, score = det["bbox"], det["score"]
        if not isinstance(bbox, list) or len(bbox) < 4 or not _finite_box(bbox[:4]):
            raise DataError(f"data.keypoints.person_boxes: {path} entry [{i}] has bbox {bbox!r}; expected [x, y, w, h]")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise DataError(f"data.keypoints.person_boxes: {path} entry [{i}] has score {score!r}; expected a number")
        if det["category_id"] != person_id or float(det["score"]) < thr:
            continue
        joints = np.zeros((num_joints, 3))
        records.append({"image_id": det["image_id"], "bbox": list(det["bbox"][:4]), "joints": joints,
                        "box_score": float(det["score"])})
    return records


# --------------------------------------------------------------------------- the dataset


class CocoKeypoints(Dataset):
    """Top-down person crops over ``root/annotations/person_keypoints_{split}2017.json`` + ``root/{split}2017/``.

    ``train=True``: ground-truth crops with the random augmentation; else fixed crops from the
    detections (``person_boxes``) or the ground truth (``use_gt_boxes_val``). ``coco`` is the
    pycocotools index of the whole json (the evaluator scores every image of it, as mmpose does).
    """

    def __init__(self, root: str | Path, split: str, options: KeypointsDataOptions, *, train: bool,
                 verify: bool = False, year: str = "2017") -> None:
        self.root, self.split, self.options, self.train = Path(root), split, options, train
        if not self.root.is_dir():
            raise DataError(f"data.root: directory {self.root} does not exist")
        self.ann_file = self.root / "annotations" / f"person_keypoints_{split}{year}.json"
        self.image_dir = self.root / f"{split}{year}"
        if not self.ann_file.is_file():
            raise DataError(f"annotation file {self.ann_file} does not exist (expected the COCO layout "
                            f"<data.root>/annotations/person_keypoints_{split}{year}.json)")
        if not self.image_dir.is_dir():
            raise DataError(f"image directory {self.image_dir} does not exist (split {split!r})")
        data = _load_json(self.ann_file)
        _check_entries(data, self.ann_file)
        self.person_id, self.joint_names = _check_keypoint_json(data, self.ann_file)
        _check_image_files(data["images"], self.image_dir, self.ann_file)
        if verify:
            verify_images(self.image_dir, [img["file_name"] for img in data["images"]], self.ann_file)
        data.setdefault("info", {})
        data.setdefault("licenses", [])
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self._set_metadata()
        self.records = self._records()
        for i, rec in enumerate(self.records):
            rec["crop_id"] = i

    def _set_metadata(self) -> None:
        k = len(self.joint_names)
        self.num_joints = k
        self.num_classes = 1
        self.label_to_category = {1: self.person_id}
        self.category_names = [str(self.coco.cats[self.person_id]["name"])]
        self.flip_pairs = flip_pairs(self.joint_names)
        self.keypoint_sigmas = list(COCO_SIGMAS) if k == len(COCO_SIGMAS) else None
        self.image_ids = sorted(self.coco.imgs)
        self.oks_thr, self.vis_thr = self.options.oks_thr, self.options.vis_thr

    def _records(self) -> list[dict[str, Any]]:
        if self.train or self.options.use_gt_boxes_val:
            return gt_records(self.coco, self.image_ids, self.num_joints)
        if not self.options.person_boxes:
            raise DataError("data.keypoints.person_boxes: not set; give a person detection results file, "
                            "or data.keypoints.use_gt_boxes_val=true")
        path = Path(self.options.person_boxes)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise DataError(f"data.keypoints.person_boxes: file {path} does not exist")
        return detection_records(path, self.coco, self.person_id, self.options.det_bbox_thr, self.num_joints)

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> list[int]:
        """Every crop has the input's aspect ratio: one group."""
        return [0] * len(self.records)

    def _image(self, image_id: int) -> Tensor:
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            with Image.open(path) as f:
                return TF.pil_to_tensor(f.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        index, seed = _parse_item(item)
        rec = self.records[index]
        image = self._image(rec["image_id"])
        opts = self.options
        in_h, in_w = int(opts.input_size[0]), int(opts.input_size[1])
        if self.train:
            gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, (1,))))
            center, size, rotation, flipped, joints = augment(rec, image.shape[-1], opts, self.flip_pairs, gen)
        else:
            center, size = box_center_size(rec["bbox"], in_w / in_h, opts.padding)
            rotation, flipped, joints = 0.0, False, rec["joints"].copy()
        matrix = crop_matrix(center, size, rotation, (in_w, in_h))
        if flipped:  # mirror the image first (x' = W − 1 − x), then crop
            mirror = np.array([[-1.0, 0, image.shape[-1] - 1], [0, 1, 0], [0, 0, 1]])
            crop = warp(image, matrix @ mirror, (in_h, in_w)) / 255.0
        else:
            crop = warp(image, matrix, (in_h, in_w)) / 255.0
        joints[:, :2] = np.where(joints[:, 2:] > 0, apply(matrix, joints[:, :2]), joints[:, :2])
        heatmaps, weight = gaussian_targets(joints, joints[:, 2], (in_h, in_w), tuple(opts.heatmap_size), opts.sigma)
        return crop, self._target(rec, image, joints, heatmaps, weight, matrix, size, (in_h, in_w))

    def _target(self, rec, image, joints, heatmaps, weight, matrix, size, in_hw) -> dict[str, Any]:
        inv = np.linalg.inv(matrix)[:2]
        return {
            "heatmaps": heatmaps,
            "target_weight": weight,
            "joints": torch.as_tensor(joints, dtype=torch.float32),
            "image_id": int(rec["image_id"]),
            "crop_id": int(rec["crop_id"]),
            "box_score": float(rec["box_score"]),
            "area": float(size[0] * size[1]),
            "crop_to_image": torch.as_tensor(inv, dtype=torch.float64),
            "flip_pairs": torch.as_tensor(self.flip_pairs, dtype=torch.int64).reshape(-1, 2),
            "size": torch.tensor(in_hw, dtype=torch.int64),
            "orig_size": torch.tensor(image.shape[-2:], dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, crops={len(self)}, "
                f"images={len(self.image_ids)}, train={self.train})")


def keypoint_pair(root: str | Path, options: Any, verify: bool = False) -> tuple[CocoKeypoints, CocoKeypoints]:
    """train2017 (augmented ground-truth crops) and val2017 (detected or ground-truth crops)."""
    opts = keypoint_options(options)
    train = CocoKeypoints(root, "train", opts, train=True, verify=verify)
    val = CocoKeypoints(root, "val", opts, train=False, verify=verify)
    return train, val


def _build_coco_keypoints(root: str | Path | None, needs: Any, **options: Any):
    """Real COCO 2017 person keypoints at ``data.root``."""
    if root is None or str(root) == "":
        raise DataError("data.root: not set; give the directory of COCO 2017 (annotations/person_keypoints_*.json)")
    return keypoint_pair(root, options.get("keypoints"), bool(options.get("verify_images", False)))


def _register() -> None:
    from .registry import DatasetEntry, register_dataset

    register_dataset(DatasetEntry(
        "coco_keypoints",
        "COCO 2017 person keypoints, top-down crops with heatmap targets (Table 7, pose estimation)",
        builder=_build_coco_keypoints,
        pipelines=("topdown",),
    ))


_register()
