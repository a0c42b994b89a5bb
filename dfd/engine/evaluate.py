"""COCO evaluation with pycocotools."""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

BBOX_METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl")


def to_coco_results(
    outputs: Iterable[dict[str, Tensor]], targets: Iterable[dict[str, Tensor]], label_to_category: dict[int, int]
) -> list[dict]:
    """Detections in the input's coordinates -> COCO result records in the original image's pixels."""
    results = []
    for out, tgt in zip(outputs, targets):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        (h, w), (oh, ow) = tgt["size"].tolist(), tgt["orig_size"].tolist()
        boxes = boxes * torch.tensor([ow / w, oh / h, ow / w, oh / h])
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        image_id = int(tgt["image_id"])
        for box, score, label in zip(xywh, out["scores"].tolist(), out["labels"].tolist()):
            results.append(
                {"image_id": image_id, "category_id": label_to_category[int(label)], "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
            )
    return results


def coco_bbox_metrics(coco_gt, results: list[dict], image_ids: list[int]) -> tuple[dict[str, float | None], str]:
    """COCO bbox AP, AP50, AP75, APs, APm, APl in percent, and pycocotools' summary text."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # pycocotools cannot load an empty result list; no detections means AP 0
        return {k: 0.0 for k in BBOX_METRICS}, "no detections"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:6]]
    # pycocotools writes -1 where a size range has no ground truth: undefined, kept as None
    return {k: (100.0 * s if s >= 0 else None) for k, s in zip(BBOX_METRICS, stats)}, buf.getvalue()


@torch.no_grad()
def evaluate_detector(
    model: nn.Module, loader: Iterable, dataset, *, device: torch.device, amp_dtype: torch.dtype | None = None, progress: bool = False
) -> dict[str, float | None]:
    """Run ``model`` over ``loader`` (a val loader of ``dataset``) and score it with pycocotools."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    results: list[dict] = []
    for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
        images = [im.to(device, non_blocking=True) for im in images]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images)
        results += to_coco_results(outputs, targets, dataset.label_to_category)
    model.train(was_training)
    metrics, summary = coco_bbox_metrics(dataset.coco, results, list(dataset.ids))
    log.info("COCO bbox evaluation (%d detections):\n%s", len(results), summary)
    return metrics
