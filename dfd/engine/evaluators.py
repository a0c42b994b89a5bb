"""Validation metrics by task: COCO bbox / segm / keypoints with pycocotools, and semantic mIoU.

One evaluator per metric family, picked by task (``TASK_EVALUATORS``); each is fed batch by batch
(``update``), and under ``torch.distributed`` every rank evaluates its own shard of the validation
images (``shard_indices``) before ``finish`` gathers the states on the main rank, which merges them,
computes and broadcasts the metrics dict.

Conventions of the inputs of ``Evaluator.update(outputs, targets)`` (one entry per image):

* ``targets[i]`` holds at least ``image_id`` (int or 0-d tensor), ``size`` ((h, w) of the input the
  model saw: int64 tensor or tuple) and ``orig_size`` ((H, W) of the original image).
* bbox: ``outputs[i]`` has ``boxes`` float [K, 4] xyxy in the input's pixels, ``scores`` [K] and
  ``labels`` int64 [K] in 1..num_classes. Boxes are scaled back by orig/size per axis
  (x * W / w, y * H / h), written as COCO xywh rounded to 0.01 px, scores rounded to 1e-5, and the
  labels mapped to category ids with ``dataset.label_to_category``.
* segm: as bbox, plus ``masks`` float [K, 1, h, w] or [K, h, w] (probabilities or 0/1) at the input
  size. Each mask is resized bilinearly to (H, W), thresholded at > 0.5 and RLE-encoded with
  pycocotools (``counts`` decoded to str). The records carry no ``bbox``, so pycocotools takes the
  detection's area from the mask (as detectron2 does), the same definition as the ground truth's.
* keypoints: ``outputs[i]`` has ``keypoints`` float [K, J, 3] (x, y, score) and ``scores`` [K]; with a
  ``targets[i]["crop_to_image"]`` [2, 3] (top-down crops) the keypoints are in the crop's pixels and mapped by it,
  else they are in the original image's pixels. ``crop_id``, ``box_score`` and ``area`` of the target are the
  crop's; poses are rescored and OKS-NMSed per image before COCOeval (:class:`KeypointsEvaluator`), which uses
  its 17 COCO sigmas, or ``dataset.keypoint_sigmas`` if the dataset has them.
* miou: ``outputs[i]["sem_seg"]`` float [C, h, w] logits (or int64 [h, w] labels) at the input size;
  ``targets[i]["sem_seg"]`` int64 [H, W] ground truth where ``dataset.ignore_index`` (255 if absent)
  marks unlabelled pixels. Logits are resized bilinearly (labels: nearest) to [H, W] before the argmax.

COCO evaluators score exactly the images seen in ``update`` (after ``merge``: those of all ranks),
via ``params.imgIds``. An image seen twice keeps its first predictions (``DistributedSampler`` pads
the last shard with repeats). Metrics are in percent; ``None`` where undefined (pycocotools' -1:
no ground truth in that size range).
"""
from __future__ import annotations

import abc
import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor

from .dist import DistInfo

log = logging.getLogger(__name__)

Metrics = dict[str, "float | None"]
MASK_CHUNK = 16  # masks resized to the original size at a time (memory: chunk x H x W floats)
COCO_KEYPOINT_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                        0.087, 0.087, 0.089, 0.089)  # pycocotools' kpt_oks_sigmas


def _hw(value: Any) -> tuple[int, int]:
    """(h, w) from an int64 tensor [2] or a tuple."""
    h, w = (torch.as_tensor(value).tolist() if isinstance(value, Tensor) else value)
    return int(h), int(w)


def _image_id(target: dict[str, Any]) -> int:
    return int(target["image_id"])


# --------------------------------------------------------------------------- COCO result records


def _box_records(out: dict[str, Tensor], tgt: dict[str, Any], label_to_category: dict[int, int]) -> list[dict]:
    """One image's boxes -> COCO bbox records in original pixels: x' = x * W / w, y' = y * H / h."""
    boxes = out["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    (h, w), (oh, ow) = _hw(tgt["size"]), _hw(tgt["orig_size"])
    boxes = boxes * torch.tensor([ow / w, oh / h, ow / w, oh / h])
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    image_id = _image_id(tgt)
    return [
        {"image_id": image_id, "category_id": label_to_category[int(label)], "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        for box, score, label in zip(xywh, out["scores"].tolist(), out["labels"].tolist())
    ]


def to_coco_results(
    outputs: Iterable[dict[str, Tensor]], targets: Iterable[dict[str, Any]], label_to_category: dict[int, int]
) -> list[dict]:
    """Detections in the input's coordinates -> COCO result records in the original image's pixels."""
    return [rec for out, tgt in zip(outputs, targets) for rec in _box_records(out, tgt, label_to_category)]


def masks_to_rles(masks: Tensor, orig_size: tuple[int, int]) -> list[dict]:
    """Masks [K, 1, h, w] or [K, h, w] -> K compressed RLEs of (bilinear resize to orig_size) > 0.5."""
    from pycocotools import mask as mask_util

    if masks.dim() == 4:
        masks = masks.squeeze(1)
    rles: list[dict] = []
    for chunk in masks.detach().split(MASK_CHUNK):
        chunk = chunk.float()
        if tuple(chunk.shape[-2:]) != tuple(orig_size):
            chunk = F.interpolate(chunk[:, None], size=orig_size, mode="bilinear", align_corners=False)[:, 0]
        binary = (chunk > 0.5).to(torch.uint8).cpu().numpy()
        for rle in mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0))):
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
    return rles


def _segm_records(out: dict[str, Tensor], tgt: dict[str, Any], label_to_category: dict[int, int]) -> list[dict]:
    """One image's masks -> COCO segm records (RLE at the original size, no bbox: area from the mask)."""
    if "masks" not in out:
        raise ValueError("the segm evaluator needs outputs[i]['masks'] ([K, 1, h, w] or [K, h, w] at the input size)")
    if out["masks"].shape[0] == 0:
        return []
    rles = masks_to_rles(out["masks"], _hw(tgt["orig_size"]))
    image_id = _image_id(tgt)
    return [
        {"image_id": image_id, "category_id": label_to_category[int(label)], "segmentation": rle, "score": round(float(score), 5)}
        for rle, score, label in zip(rles, out["scores"].tolist(), out["labels"].tolist())
    ]


def _keypoint_records(poses: list[dict[str, Any]], category_id: int) -> list[dict]:
    """One image's kept poses (``keypoints`` [K, 3] in image pixels, rescored ``score``) -> COCO keypoint records:
    ``keypoints`` flat x1, y1, s1, x2, y2, s2, ... (the visibility slot carries the joint score, as mmpose writes it)."""
    return [
        {"image_id": int(p["image_id"]), "category_id": int(category_id),
         "keypoints": [round(float(v), 3) for v in np.asarray(p["keypoints"]).reshape(-1)], "score": float(p["score"])}
        for p in poses
    ]


def crop_to_image(keypoints: Tensor, matrix: Any) -> np.ndarray:
    """Keypoints [..., K, 3] (x, y, score) in crop pixels -> image pixels by the crop's affine [2, 3]: p' = A p + t."""
    kpts = keypoints.detach().double().cpu().numpy().copy()
    m = np.asarray(torch.as_tensor(matrix, dtype=torch.float64).cpu())
    kpts[..., :2] = kpts[..., :2] @ m[:, :2].T + m[:, 2]
    return kpts


def rescore(keypoints: np.ndarray, box_score: float, vis_thr: float) -> float:
    """mmpose's rescoring: s = box_score · mean{s_j : s_j > vis_thr} (0 when no joint passes)."""
    scores = keypoints[:, 2]
    valid = scores[scores > vis_thr]
    return float(box_score) * (float(valid.mean()) if valid.size else 0.0)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float, sigmas: Any = None) -> list[int]:
    """mmpose's ``oks_nms`` (no joint threshold): greedily keep the best pose, drop those with OKS > ``thr`` to it,

    OKS(i, j) = 1/K · Σ_k exp(−d_k² / (2 · (2σ_k)² · ((a_i + a_j) / 2 + ε))), a = the crops' padded box areas.
    keypoints [N, K, 3]; returns the kept indices, best first.
    """
    sig = np.asarray(sigmas if sigmas is not None else COCO_KEYPOINT_SIGMAS, dtype=np.float64)
    var = (2 * sig) ** 2
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        d2 = ((keypoints[rest, :, :2] - keypoints[i, :, :2]) ** 2).sum(-1)
        e = d2 / var / ((areas[i] + areas[rest])[:, None] / 2 + np.spacing(1)) / 2
        order = rest[np.exp(-e).mean(axis=1) <= thr]
    return keep


def _gt_copy(coco_gt):
    """A COCO index over shallow copies of the annotations: COCOeval writes ``ignore`` into them and, for
    segm, replaces polygons by RLEs; the dataset's own index stays as it was."""
    from pycocotools.coco import COCO

    copy = COCO()
    copy.dataset = {**coco_gt.dataset, "annotations": [dict(a) for a in coco_gt.dataset["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return copy


def coco_metrics(
    coco_gt, results: list[dict], image_ids: list[int], iou_type: str, names: Sequence[str], sigmas: Any = None
) -> tuple[Metrics, str]:
    """pycocotools' stats[:len(names)] on ``image_ids``, in percent (-1 -> None), and its summary text.

    No detections gives 0 for every metric (pycocotools cannot load an empty result list); no
    images gives None for every metric (there is nothing to score).
    """
    from pycocotools.cocoeval import COCOeval

    if not image_ids:
        return {k: None for k in names}, "no images evaluated"
    if not results:
        return {k: 0.0 for k in names}, "no detections"
    coco_gt = _gt_copy(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes writes into the records
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = list(image_ids)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    stats = [float(s) for s in ev.stats[: len(names)]]
    return {k: (100.0 * s if s >= 0 else None) for k, s in zip(names, stats)}, summary.getvalue()


# --------------------------------------------------------------------------- evaluators


class Evaluator(abc.ABC):
    """Accumulates one process's predictions and turns them into ``metrics`` (percent, None = undefined)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.summary = ""  # human-readable report of the last compute()

    @abc.abstractmethod
    def update(self, outputs: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        """Add one batch: ``outputs[i]`` is the prediction for the image ``targets[i]`` describes."""

    @abc.abstractmethod
    def state(self) -> Any:
        """Picklable results accumulated by this process."""

    @abc.abstractmethod
    def merge(self, states: list[Any]) -> None:
        """Replace this process's accumulation by the union of ``states`` (every rank's, own included)."""

    @abc.abstractmethod
    def compute(self) -> Metrics:
        """``{metric: value}`` for every name in ``metrics``."""


class CocoEvaluator(Evaluator):
    """COCOeval over the images seen; the state is ``{"image_ids": [...], "results": [COCO records]}``."""

    iou_type: ClassVar[str]

    def __init__(self, dataset) -> None:
        super().__init__(dataset)
        self.coco = dataset.coco
        self.label_to_category: dict[int, int] = dict(dataset.label_to_category)
        self._per_image: dict[int, list[dict]] = {}

    @abc.abstractmethod
    def records(self, out: dict[str, Tensor], tgt: dict[str, Any]) -> list[dict]:
        """One image's prediction as COCO result records."""

    def update(self, outputs: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        if len(outputs) != len(targets):
            raise ValueError(f"{self.name} evaluator: {len(outputs)} outputs for {len(targets)} targets")
        for out, tgt in zip(outputs, targets):
            image_id = _image_id(tgt)
            if image_id not in self._per_image:  # a repeated image (sampler padding) keeps its first predictions
                self._per_image[image_id] = self.records(out, tgt)

    def state(self) -> dict[str, list]:
        return {"image_ids": list(self._per_image), "results": [r for recs in self._per_image.values() for r in recs]}

    def merge(self, states: list[dict[str, list]]) -> None:
        merged: dict[int, list[dict]] = {}
        for st in states:
            new = {int(i): [] for i in st["image_ids"] if int(i) not in merged}
            for rec in st["results"]:
                if rec["image_id"] in new:
                    new[rec["image_id"]].append(rec)
            merged.update(new)
        self._per_image = merged

    def sigmas(self) -> Any:
        return None

    def compute(self) -> Metrics:
        image_ids = sorted(self._per_image)  # sorted: the same order however the images were split
        results = [r for i in image_ids for r in self._per_image[i]]
        metrics, self.summary = coco_metrics(self.coco, results, image_ids, self.iou_type, self.metrics, self.sigmas())
        return metrics


class BboxEvaluator(CocoEvaluator):
    """COCO box AP (IoU .50:.05:.95), AP50, AP75 and AP by area: small < 32², medium < 96² ≤ large."""

    name = "bbox"
    iou_type = "bbox"
    metrics = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl")

    def records(self, out: dict[str, Tensor], tgt: dict[str, Any]) -> list[dict]:
        return _box_records(out, tgt, self.label_to_category)


class SegmEvaluator(CocoEvaluator):
    """COCO mask AP: as bbox with IoU = |A ∩ B| / |A ∪ B| over mask pixels."""

    name = "segm"
    iou_type = "segm"
    metrics = ("segm/AP", "segm/AP50", "segm/AP75", "segm/APs", "segm/APm", "segm/APl")

    def records(self, out: dict[str, Tensor], tgt: dict[str, Any]) -> list[dict]:
        return _segm_records(out, tgt, self.label_to_category)


class KeypointsEvaluator(CocoEvaluator):
    """COCO keypoint AP by OKS = Σ_j exp(-d_j² / (2 s² k_j²)) δ(v_j > 0) / Σ_j δ(v_j > 0), s² = GT area, k_j = 2σ_j.

    Top-down: each prediction is one person crop (or one pose of a multi-person output), kept per
    (image_id, crop_id). ``compute`` maps them to image pixels (``crop_to_image``), groups them per
    image, rescores (:func:`rescore`, ``dataset.vis_thr``, 0.2), keeps the OKS-NMS survivors
    (:func:`oks_nms`, ``dataset.oks_thr``, 0.9) and scores every image of ``dataset.image_ids``
    (mmpose scores the whole val json: an image whose people were never detected counts as missed).
    """

    name = "keypoints"
    iou_type = "keypoints"
    metrics = ("keypoints/AP", "keypoints/AP50", "keypoints/AP75", "keypoints/APm", "keypoints/APl", "keypoints/AR")

    def __init__(self, dataset) -> None:
        super().__init__(dataset)
        self.oks_thr = float(getattr(dataset, "oks_thr", 0.9))
        self.vis_thr = float(getattr(dataset, "vis_thr", 0.2))
        self._crops: dict[tuple[int, int, int], dict[str, Any]] = {}

    def sigmas(self) -> Any:
        return getattr(self.dataset, "keypoint_sigmas", None)

    def _joints(self) -> int:
        sigmas = self.sigmas()
        return len(sigmas) if sigmas is not None else 17

    def crops(self, out: dict[str, Tensor], tgt: dict[str, Any]) -> list[dict[str, Any]]:
        """One output's poses in image pixels, each with its box score and the OKS-NMS area."""
        kpts = out["keypoints"]
        if kpts.numel() == 0:
            return []
        joints = self._joints()
        if kpts.dim() != 3 or tuple(kpts.shape[1:]) != (joints, 3):
            raise ValueError(f"keypoints evaluator: outputs[i]['keypoints'] must be [K, {joints}, 3], got {tuple(kpts.shape)}")
        image = crop_to_image(kpts, tgt["crop_to_image"]) if "crop_to_image" in tgt else kpts.double().cpu().numpy()
        image = np.round(image, 3)  # as the records are written (1e-3 px), so a merged state computes the same
        scores = out["scores"].detach().double().cpu().tolist()
        poses = []
        for k, pose in enumerate(image):
            area = tgt.get("area")
            if area is None:
                span = pose[:, :2].max(0) - pose[:, :2].min(0)
                area = float(span[0] * span[1])
            box_score = tgt["box_score"] if "box_score" in tgt and len(image) == 1 else scores[k]
            poses.append({"image_id": _image_id(tgt), "keypoints": pose, "box_score": float(box_score), "area": float(area)})
        return poses

    def update(self, outputs: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        if len(outputs) != len(targets):
            raise ValueError(f"{self.name} evaluator: {len(outputs)} outputs for {len(targets)} targets")
        for out, tgt in zip(outputs, targets):
            crop = int(tgt["crop_id"]) if "crop_id" in tgt else len(self._crops)
            for k, pose in enumerate(self.crops(out, tgt)):
                self._crops.setdefault((pose["image_id"], crop, k), pose)  # a repeated crop (padding) keeps its first
            self._per_image.setdefault(_image_id(tgt), [])

    def state(self) -> dict[str, list]:
        """The crops as COCO-like records (before rescoring: ``score`` is the box score), with ``crop`` and ``area``."""
        category = next(iter(self.label_to_category.values()), 1)
        results = [{"image_id": key[0], "category_id": category, "crop": [key[1], key[2]], "area": pose["area"],
                    "keypoints": np.asarray(pose["keypoints"]).reshape(-1).tolist(), "score": pose["box_score"]}
                   for key, pose in self._crops.items()]
        return {"image_ids": list(self._per_image), "results": results}

    def merge(self, states: list[dict[str, list]]) -> None:
        crops: dict[tuple[int, int, int], dict[str, Any]] = {}
        seen: dict[int, list] = {}
        for st in states:
            for rec in st["results"]:
                pose = {"image_id": int(rec["image_id"]), "keypoints": np.asarray(rec["keypoints"], dtype=np.float64).reshape(-1, 3),
                        "box_score": float(rec["score"]), "area": float(rec["area"])}
                crops.setdefault((int(rec["image_id"]), int(rec["crop"][0]), int(rec["crop"][1])), pose)
            seen.update({int(i): [] for i in st["image_ids"]})
        self._crops, self._per_image = crops, seen

    def kept_poses(self) -> dict[int, list[dict[str, Any]]]:
        """Per image, the rescored poses that survive OKS NMS."""
        per_image: dict[int, list[dict[str, Any]]] = {}
        for key in sorted(self._crops):  # by crop id, as mmpose sorts by bbox_id
            per_image.setdefault(key[0], []).append(self._crops[key])
        kept = {}
        for image_id, poses in per_image.items():
            kpts = np.stack([np.asarray(p["keypoints"], dtype=np.float64) for p in poses])
            scores = np.array([rescore(k, p["box_score"], self.vis_thr) for k, p in zip(kpts, poses)])
            areas = np.array([p["area"] for p in poses], dtype=np.float64)
            keep = oks_nms(kpts, scores, areas, self.oks_thr, self.sigmas())
            kept[image_id] = [{"image_id": image_id, "keypoints": kpts[i], "score": scores[i]} for i in keep]
        return kept

    def compute(self) -> Metrics:
        category = next(iter(self.label_to_category.values()), 1)
        results = [r for poses in self.kept_poses().values() for r in _keypoint_records(poses, category)]
        image_ids = getattr(self.dataset, "image_ids", None) or sorted(self._per_image)
        metrics, self.summary = coco_metrics(self.coco, results, list(image_ids), self.iou_type, self.metrics, self.sigmas())
        return metrics

    def records(self, out: dict[str, Tensor], tgt: dict[str, Any]) -> list[dict]:
        """Unused (poses are kept per crop, see :meth:`update`); the poses of one output as records, unfiltered."""
        poses = [{**p, "score": rescore(p["keypoints"], p["box_score"], self.vis_thr)} for p in self.crops(out, tgt)]
        return _keypoint_records(poses, next(iter(self.label_to_category.values()), 1))


# --------------------------------------------------------------------------- semantic segmentation


def _semantic_prediction(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Logits [C, h, w] -> labels [H, W] by argmax after a bilinear resize; labels [h, w] resized nearest."""
    pred = pred.detach()
    if pred.is_floating_point():
        if tuple(pred.shape[-2:]) != tuple(size):
            pred = F.interpolate(pred[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        return pred.argmax(0)
    if tuple(pred.shape[-2:]) != tuple(size):
        pred = F.interpolate(pred[None, None].float(), size=size, mode="nearest")[0, 0]
    return pred.long()


def confusion_matrix(pred: Tensor, gt: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """int64 [C, C]: entry (g, p) counts pixels of ground truth g predicted as p; ignored pixels left out."""
    valid = gt != ignore_index
    g, p = gt[valid].long(), pred[valid].long()
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        raise ValueError(f"miou evaluator: ground-truth label outside 0..{num_classes - 1} (ignore index {ignore_index})")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"miou evaluator: predicted label outside 0..{num_classes - 1}")
    return torch.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def miou_metrics(confusion: Tensor) -> tuple[Metrics, Tensor]:
    """Percentages from a confusion matrix, and the per-class IoU (nan where undefined).

    IoU_c = TP_c / (TP_c + FP_c + FN_c), mIoU = mean over classes present in GT or prediction;
    Acc_c = TP_c / (TP_c + FN_c), mAcc = mean over classes present in GT; aAcc = Σ TP / Σ pixels.
    """
    cm = confusion.double()
    tp, gt_pixels, pred_pixels = cm.diag(), cm.sum(1), cm.sum(0)
    union = gt_pixels + pred_pixels - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = tp / gt_pixels.clamp(min=1)

    def mean(values: Tensor) -> float | None:
        return 100.0 * float(values.mean()) if values.numel() else None

    total = float(cm.sum())
    metrics = {
        "seg/mIoU": mean(iou[union > 0]),
        "seg/mAcc": mean(acc[gt_pixels > 0]),
        "seg/aAcc": 100.0 * float(tp.sum()) / total if total else None,
    }
    return metrics, iou


class MIoUEvaluator(Evaluator):
    """Semantic segmentation: a C x C confusion matrix (rows ground truth, columns prediction), summed over
    the images (mmseg's ``eval_metrics``: total areas, then the ratios). Each image is scored at the size of
    its ``sem_seg`` ground truth (the label file's original resolution); the summary lists the IoU of each
    class by ``dataset.class_names`` (classes absent from ground truth and prediction left out)."""

    name = "miou"
    metrics = ("seg/mIoU", "seg/mAcc", "seg/aAcc")

    def __init__(self, dataset) -> None:
        super().__init__(dataset)
        self.num_classes = int(dataset.num_classes)
        self.ignore_index = int(getattr(dataset, "ignore_index", 255))
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.per_class_iou: Tensor | None = None

    def update(self, outputs: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        if len(outputs) != len(targets):
            raise ValueError(f"miou evaluator: {len(outputs)} outputs for {len(targets)} targets")
        for out, tgt in zip(outputs, targets):
            gt = torch.as_tensor(tgt["sem_seg"])
            gt = gt[0] if gt.dim() == 3 and gt.shape[0] == 1 else gt
            logits = out["sem_seg"]
            if logits.is_floating_point() and logits.shape[0] != self.num_classes:
                raise ValueError(f"miou evaluator: sem_seg logits have {logits.shape[0]} classes, the dataset {self.num_classes}")
            pred = _semantic_prediction(logits, tuple(gt.shape[-2:]))
            self.confusion += confusion_matrix(pred, gt.to(pred.device), self.num_classes, self.ignore_index)

    def state(self) -> Tensor:
        return self.confusion.clone()

    def merge(self, states: list[Tensor]) -> None:
        self.confusion = torch.stack([torch.as_tensor(s, dtype=torch.int64).cpu() for s in states]).sum(0)

    def compute(self) -> Metrics:
        metrics, self.per_class_iou = miou_metrics(self.confusion)
        names = list(getattr(self.dataset, "class_names", None) or range(self.num_classes))
        rows = [f"class {names[c]}: IoU {100 * float(v):.2f}" for c, v in enumerate(self.per_class_iou) if not torch.isnan(v)]
        self.summary = "\n".join([*rows, *(f"{k}: {v}" for k, v in metrics.items())])
        return metrics


# --------------------------------------------------------------------------- registry and driver


EVALUATORS: dict[str, type[Evaluator]] = {cls.name: cls for cls in (BboxEvaluator, SegmEvaluator, KeypointsEvaluator, MIoUEvaluator)}
TASK_EVALUATORS: dict[str, tuple[str, ...]] = {
    "detection": ("bbox",),
    "instance": ("bbox", "segm"),
    "keypoints": ("keypoints",),
    "semantic": ("miou",),
}
PRIMARY_METRICS: dict[str, str] = {
    "detection": "bbox/AP",
    "instance": "bbox/AP",  # the paper reports box mAP for Mask R-CNN students
    "keypoints": "keypoints/AP",
    "semantic": "seg/mIoU",
}


def _check_task(task: str) -> None:
    if task not in TASK_EVALUATORS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_EVALUATORS)}")


def build_evaluators(task: str, dataset) -> list[Evaluator]:
    """The evaluators of ``task`` (``TASK_EVALUATORS``) over ``dataset``."""
    _check_task(task)
    return [EVALUATORS[name](dataset) for name in TASK_EVALUATORS[task]]


def primary_metric(task: str) -> str:
    """The metric a task is ranked by."""
    _check_task(task)
    return PRIMARY_METRICS[task]


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Dataset indices rank ``rank`` evaluates: rank, rank + W, rank + 2W, ... (each index once over all ranks)."""
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"shard_indices: need n >= 0 and 0 <= rank < world_size, got n={n}, rank={rank}, world_size={world_size}")
    return list(range(rank, n, world_size))


def _compute_all(evaluators: Sequence[Evaluator]) -> Metrics:
    metrics: Metrics = {}
    for ev in evaluators:
        metrics.update(ev.compute())
        log.info("%s evaluation:\n%s", ev.name, ev.summary)
    return metrics


def finish(evaluators: Sequence[Evaluator], info: DistInfo) -> Metrics:
    """All metrics of ``evaluators``; under torch.distributed the same dict on every rank.

    Distributed: every rank's states are all-gathered, the main rank merges and computes, and the
    dict (or the main rank's error, re-raised everywhere so no rank hangs) is broadcast.
    """
    if not info.enabled:
        return _compute_all(evaluators)
    gathered: list[Any] = [None] * info.world_size
    torch_dist.all_gather_object(gathered, [ev.state() for ev in evaluators])
    payload: list[Any] = [None]
    if info.is_main:
        try:
            for i, ev in enumerate(evaluators):
                ev.merge([states[i] for states in gathered])
            payload = [("ok", _compute_all(evaluators))]
        except Exception as e:  # sent to the other ranks before re-raising here
            payload = [("error", f"{type(e).__name__}: {e}")]
            torch_dist.broadcast_object_list(payload, src=0)
            raise
    torch_dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status != "ok":
        raise RuntimeError(f"evaluation failed on the main rank: {value}")
    return value
