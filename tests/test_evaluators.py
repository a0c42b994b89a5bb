"""Task evaluators on hand-built COCO ground truth: exact scores, sharding, merging and torch.distributed."""
from __future__ import annotations

import contextlib
import io
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from dfd.engine.dist import DistInfo
from dfd.engine.evaluators import (
    EVALUATORS,
    TASK_EVALUATORS,
    BboxEvaluator,
    KeypointsEvaluator,
    MIoUEvaluator,
    SegmEvaluator,
    build_evaluators,
    finish,
    masks_to_rles,
    primary_metric,
    shard_indices,
    to_coco_results,
)

H, W = 120, 160  # every detection image, (height, width)
KPT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
             "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3],
            [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


# --------------------------------------------------------------------------- ground truth


def _rect_rle(x: int, y: int, w: int, h: int) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros) of a rectangle in an H x W image."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    flat = mask.flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = ([0] if flat[0] else []) + np.diff(edges).tolist()
    return {"size": [H, W], "counts": counts}


def _poly(x: int, y: int, w: int, h: int) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(i: int, image_id: int, cat: int, x: int, y: int, w: int, h: int, *, rle: bool = False, crowd: int = 0) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd,
            "segmentation": _rect_rle(x, y, w, h) if rle else _poly(x, y, w, h)}


def detection_gt() -> dict:
    """4 images, categories 3 and 7; small, medium, large objects, polygon and RLE masks, a crowd region, an empty image."""
    anns = [
        _ann(1, 1, 3, 10, 10, 40, 40),  # medium, polygon
        _ann(2, 1, 7, 80, 60, 20, 20, rle=True),  # small, RLE
        _ann(3, 2, 3, 20, 10, 100, 100),  # large
        _ann(4, 2, 7, 130, 0, 30, 30, rle=True, crowd=1),  # crowd: matched or not, never counted
        _ann(5, 3, 7, 60, 40, 50, 40, rle=True),  # medium
        _ann(6, 3, 3, 0, 80, 16, 16),  # small
    ]
    images = [{"id": i, "width": W, "height": H, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)]
    return {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "slab"}]}


def _person(i: int, image_id: int, x: int, y: int, w: int, h: int, rng: np.random.Generator, *, visible: bool = True) -> dict:
    xs, ys = rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17)
    vis = rng.choice([0, 1, 2], 17, p=[0.2, 0.3, 0.5]) if visible else np.zeros(17, dtype=int)
    kpts = np.stack([np.where(vis > 0, xs, 0), np.where(vis > 0, ys, 0), vis], 1).round(1)
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            "keypoints": kpts.flatten().tolist(), "num_keypoints": int((vis > 0).sum()), "segmentation": _poly(x, y, w, h)}


def keypoint_gt() -> dict:
    """3 images of people: large ones, a medium one and one without labelled joints (ignored by COCOeval)."""
    rng = np.random.default_rng(0)
    anns = [_person(1, 1, 20, 10, 100, 110, rng), _person(2, 2, 30, 30, 40, 60, rng), _person(3, 2, 100, 20, 50, 80, rng, visible=False),
            _person(4, 3, 10, 5, 140, 110, rng), _person(5, 3, 60, 40, 40, 50, rng)]
    images = [{"id": i, "width": W, "height": H, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": KPT_NAMES, "skeleton": SKELETON}]
    return {"images": images, "annotations": anns, "categories": cats}


def load_dataset(path: Path) -> SimpleNamespace:
    """What the evaluators read of a dataset: the COCO index, ids and the label -> category id map."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    cats = sorted(coco.cats)
    return SimpleNamespace(coco=coco, ids=sorted(coco.imgs), num_classes=len(cats),
                           label_to_category={i + 1: c for i, c in enumerate(cats)}, category_to_label={c: i + 1 for i, c in enumerate(cats)})


@pytest.fixture()
def det_ds(tmp_path: Path) -> SimpleNamespace:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(detection_gt()))
    return load_dataset(path)


@pytest.fixture()
def kpt_ds(tmp_path: Path) -> SimpleNamespace:
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(keypoint_gt()))
    return load_dataset(path)


# --------------------------------------------------------------------------- predictions


def det_prediction(ds: SimpleNamespace, image_id: int, *, scale: int = 1, jitter: float = 0.0, seed: int = 0) -> tuple[dict, dict]:
    """Every non-crowd object predicted (box and mask) on an input downscaled by ``scale``; ``jitter`` px shifts added."""
    gen = torch.Generator().manual_seed(seed * 1000 + image_id)
    anns = [a for a in ds.coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4)
    boxes = boxes + jitter * torch.randn(boxes.shape, generator=gen)
    masks = torch.stack([torch.from_numpy(ds.coco.annToMask(a)).float() for a in anns]) if anns else torch.zeros(0, H, W)
    if jitter:
        masks = torch.roll(masks, shifts=(int(round(jitter)), int(round(jitter))), dims=(1, 2))
    out = {"boxes": boxes / scale, "masks": masks[:, None, ::scale, ::scale].contiguous(),
           "scores": torch.linspace(0.9, 0.5, len(anns)) if anns else torch.zeros(0),
           "labels": torch.tensor([ds.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64)}
    tgt = {"image_id": torch.tensor(image_id), "size": torch.tensor([H // scale, W // scale]), "orig_size": torch.tensor([H, W])}
    return out, tgt


def kpt_prediction(ds: SimpleNamespace, image_id: int, *, jitter: float = 0.0, seed: int = 0) -> tuple[dict, dict]:
    """Every labelled person's joints at the ground truth, ``jitter`` px noise added; (h, w) as a tuple."""
    gen = torch.Generator().manual_seed(seed * 1000 + image_id)
    anns = [a for a in ds.coco.imgToAnns[image_id] if a["num_keypoints"] > 0]
    kpts = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
    kpts[..., :2] += jitter * torch.randn(kpts[..., :2].shape, generator=gen)
    kpts[..., 2] = 0.8
    out = {"keypoints": kpts, "scores": torch.linspace(0.95, 0.6, len(anns)), "labels": torch.ones(len(anns), dtype=torch.int64)}
    return out, {"image_id": image_id, "size": (H, W), "orig_size": (H, W)}


def run(evaluator, items) -> dict:
    for out, tgt in items:
        evaluator.update([out], [tgt])
    return evaluator.compute()


# --------------------------------------------------------------------------- registry and helpers


def test_registry_tasks_and_primary_metrics(det_ds: SimpleNamespace) -> None:
    assert set(EVALUATORS) == {"bbox", "segm", "keypoints", "miou"}
    assert [type(e) for e in build_evaluators("instance", det_ds)] == [BboxEvaluator, SegmEvaluator]
    assert [e.name for e in build_evaluators("detection", det_ds)] == list(TASK_EVALUATORS["detection"])
    assert [primary_metric(t) for t in TASK_EVALUATORS] == ["bbox/AP", "bbox/AP", "keypoints/AP", "seg/mIoU"]
    for task, names in TASK_EVALUATORS.items():
        assert primary_metric(task) in EVALUATORS[names[0]].metrics
    with pytest.raises(ValueError, match=r"'panoptic'.*detection, instance, keypoints, semantic"):
        build_evaluators("panoptic", det_ds)
    with pytest.raises(ValueError, match="panoptic"):
        primary_metric("panoptic")


def test_shard_indices_cover_every_index_once() -> None:
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_indices(7, 1, 3) == [1, 4]
    with pytest.raises(ValueError):
        shard_indices(5, 2, 2)


def test_to_coco_results_rounds_and_maps_back() -> None:
    out = [{"boxes": torch.tensor([[5.0, 10.0, 25.0, 25.0]]), "scores": torch.tensor([0.123456789]), "labels": torch.tensor([2])}]
    tgt = [{"size": (50, 100), "orig_size": torch.tensor([100, 200]), "image_id": torch.tensor(7)}]
    assert to_coco_results(out, tgt, {1: 3, 2: 9}) == [{"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 40.0, 30.0], "score": 0.12346}]


def test_masks_upsample_to_original_pixels() -> None:
    full = torch.zeros(2, H, W)
    full[0, 10:50, 20:60] = 1.0
    full[1, 40:120, 100:160] = 0.95  # probabilities: > 0.5 is foreground (corners: 0.75² x 0.95 > 0.5)
    rles = masks_to_rles(full[:, None, ::2, ::2], (H, W))
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_util.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1), (full > 0.5).numpy().astype(np.uint8))


# --------------------------------------------------------------------------- COCO scores


@pytest.mark.parametrize("cls", [BboxEvaluator, SegmEvaluator])
def test_perfect_detections_score_100_also_from_a_resized_input(det_ds: SimpleNamespace, cls) -> None:
    for scale in (1, 2):
        ev = cls(det_ds)
        metrics = run(ev, [det_prediction(det_ds, i, scale=scale) for i in det_ds.ids])
        assert set(metrics) == set(cls.metrics)
        assert all(v == pytest.approx(100.0) for v in metrics.values()), (scale, metrics)
        assert "Average Precision" in ev.summary
    assert det_ds.coco.anns[1]["segmentation"] == _poly(10, 10, 40, 40) and "ignore" not in det_ds.coco.anns[1]  # GT untouched
    assert ev.compute() == metrics  # compute is repeatable


@pytest.mark.parametrize("cls", [BboxEvaluator, SegmEvaluator])
def test_jittered_detections_score_less(det_ds: SimpleNamespace, cls) -> None:
    metrics = run(cls(det_ds), [det_prediction(det_ds, i, jitter=4.0) for i in det_ds.ids])
    assert 0.0 < metrics[f"{cls.name}/AP"] < 100.0


def test_perfect_keypoints_score_100_and_jitter_less(kpt_ds: SimpleNamespace) -> None:
    metrics = run(KeypointsEvaluator(kpt_ds), [kpt_prediction(kpt_ds, i) for i in kpt_ds.ids])
    assert list(metrics) == ["keypoints/AP", "keypoints/AP50", "keypoints/AP75", "keypoints/APm", "keypoints/APl", "keypoints/AR"]
    assert all(v == pytest.approx(100.0) for v in metrics.values()), metrics
    jittered = run(KeypointsEvaluator(kpt_ds), [kpt_prediction(kpt_ds, i, jitter=6.0) for i in kpt_ds.ids])
    assert 0.0 < jittered["keypoints/AP"] < 100.0


def test_keypoint_records_carry_scores_in_the_visibility_slot(kpt_ds: SimpleNamespace) -> None:
    ev = KeypointsEvaluator(kpt_ds)
    ev.update(*map(list, zip(kpt_prediction(kpt_ds, 1))))
    (rec,) = ev.state()["results"]
    assert len(rec["keypoints"]) == 51 and rec["keypoints"][2::3] == [0.8] * 17 and rec["category_id"] == 1
    with pytest.raises(ValueError, match=r"\[K, 17, 3\]"):
        ev.update([{"keypoints": torch.zeros(1, 5, 3), "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}],
                  [{"image_id": 2, "size": (H, W), "orig_size": (H, W)}])


@pytest.mark.parametrize("cls", [BboxEvaluator, SegmEvaluator, KeypointsEvaluator])
def test_no_detections_give_zero(det_ds: SimpleNamespace, kpt_ds: SimpleNamespace, cls) -> None:
    ds = kpt_ds if cls is KeypointsEvaluator else det_ds
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 1, H, W), "keypoints": torch.zeros(0, 17, 3),
             "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    metrics = run(cls(ds), [(empty, {"image_id": i, "size": (H, W), "orig_size": (H, W)}) for i in ds.ids])
    assert metrics == {k: 0.0 for k in cls.metrics}
    assert cls(ds).compute() == {k: None for k in cls.metrics}  # nothing seen: nothing to score


def test_size_range_without_ground_truth_is_none(det_ds: SimpleNamespace, kpt_ds: SimpleNamespace) -> None:
    # image 2 holds one large object and a crowd region only
    metrics = run(BboxEvaluator(det_ds), [det_prediction(det_ds, 2)])
    assert metrics["bbox/APs"] is None and metrics["bbox/APm"] is None and metrics["bbox/APl"] == pytest.approx(100.0)
    kpts = run(KeypointsEvaluator(kpt_ds), [kpt_prediction(kpt_ds, 1)])  # one large person
    assert kpts["keypoints/APm"] is None and kpts["keypoints/AP"] == pytest.approx(100.0)


def test_only_seen_images_are_scored(det_ds: SimpleNamespace) -> None:
    # perfect on image 1 and nothing predicted on image 3: AP < 100 once image 3 has been seen
    seen_one = run(BboxEvaluator(det_ds), [det_prediction(det_ds, 1)])
    assert seen_one["bbox/AP"] == pytest.approx(100.0)
    _, tgt3 = det_prediction(det_ds, 3)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert run(BboxEvaluator(det_ds), [det_prediction(det_ds, 1), (empty, tgt3)])["bbox/AP"] < 100.0


# --------------------------------------------------------------------------- merging


def _two_rank_merge(cls, ds, items) -> tuple[dict, dict]:
    """(metrics of one evaluator over all items, metrics after merging two evaluators' strided halves)."""
    single = run(cls(ds), items)
    ranks = [cls(ds), cls(ds)]
    for rank, ev in enumerate(ranks):
        for i in shard_indices(len(items), rank, 2):
            ev.update([items[i][0]], [items[i][1]])
    states = [pickle.loads(pickle.dumps(ev.state())) for ev in ranks]
    ranks[0].merge(states)
    return single, ranks[0].compute()


@pytest.mark.parametrize("cls", [BboxEvaluator, SegmEvaluator])
def test_merged_detection_shards_equal_one_evaluator(det_ds: SimpleNamespace, cls) -> None:
    items = [det_prediction(det_ds, i, jitter=2.0) for i in det_ds.ids]
    single, merged = _two_rank_merge(cls, det_ds, items)
    assert merged == single and 0.0 < single[f"{cls.name}/AP"] < 100.0
    json.dumps(cls(det_ds).state())


def test_merged_keypoint_shards_equal_one_evaluator(kpt_ds: SimpleNamespace) -> None:
    single, merged = _two_rank_merge(KeypointsEvaluator, kpt_ds, [kpt_prediction(kpt_ds, i, jitter=3.0) for i in kpt_ds.ids])
    assert merged == single and 0.0 < single["keypoints/AP"] < 100.0


def test_merge_keeps_an_image_repeated_by_padding_once(det_ds: SimpleNamespace) -> None:
    items = [det_prediction(det_ds, i, jitter=2.0) for i in det_ds.ids]
    single = run(BboxEvaluator(det_ds), items)
    a, b = BboxEvaluator(det_ds), BboxEvaluator(det_ds)
    run(a, items[:3])
    run(b, items[3:] + items[:1])  # a DistributedSampler pads the last shard with the first image
    a.merge([a.state(), b.state()])
    assert a.compute() == single


# --------------------------------------------------------------------------- semantic segmentation


def _semantic_case(num_classes: int = 3) -> tuple[list[dict], list[dict]]:
    """GT 4x4 with two ignored pixels; one-hot logits at 2x2 whose bilinear upsampling argmaxes to 2x2 blocks.

    GT            prediction
    0 0 1 1       0 0 1 1
    0 1 1 1       0 0 1 1
    2 2 . .       2 2 0 0
    2 2 2 2       2 2 0 0
    """
    gt = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1], [2, 0]]), num_classes).permute(2, 0, 1).float()
    return [{"sem_seg": logits}], [{"sem_seg": gt, "image_id": 0, "size": (2, 2), "orig_size": (4, 4)}]


def test_miou_by_hand() -> None:
    # confusion (rows GT, columns prediction): [[3, 0, 0], [1, 4, 0], [2, 0, 4]]; the ignored pixels (predicted 0) left out
    # IoU = 3 / (3 + 3), 4 / (4 + 1), 4 / (4 + 2); Acc = 3 / 3, 4 / 5, 4 / 6; aAcc = 11 / 14
    ev = MIoUEvaluator(SimpleNamespace(num_classes=3))
    ev.update(*_semantic_case())
    assert ev.state().tolist() == [[3, 0, 0], [1, 4, 0], [2, 0, 4]]
    metrics = ev.compute()
    assert metrics["seg/mIoU"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["seg/mAcc"] == pytest.approx(100 * (1 + 0.8 + 2 / 3) / 3)
    assert metrics["seg/aAcc"] == pytest.approx(100 * 11 / 14)
    # a fourth class absent from GT and prediction does not count; labels instead of logits give the same
    four = MIoUEvaluator(SimpleNamespace(num_classes=4, ignore_index=255))
    four.update(*_semantic_case(4))
    assert four.compute() == pytest.approx(metrics)
    labels = MIoUEvaluator(SimpleNamespace(num_classes=3))
    labels.update([{"sem_seg": torch.tensor([[0, 1], [2, 0]])}], _semantic_case()[1])
    assert labels.compute() == pytest.approx(metrics)


def test_miou_ignore_index_from_the_dataset_and_merge() -> None:
    outputs, targets = _semantic_case()
    targets[0]["sem_seg"] = torch.where(targets[0]["sem_seg"] == 255, 9, targets[0]["sem_seg"])
    ev = MIoUEvaluator(SimpleNamespace(num_classes=3, ignore_index=9))
    ev.update(outputs, targets)
    assert int(ev.state().sum()) == 14
    with pytest.raises(ValueError, match="outside"):
        MIoUEvaluator(SimpleNamespace(num_classes=3)).update(outputs, targets)  # 9 is not ignored there
    other = MIoUEvaluator(SimpleNamespace(num_classes=3, ignore_index=9))
    other.update(outputs, targets)
    ev.merge([ev.state(), other.state()])
    assert ev.state().tolist() == [[6, 0, 0], [2, 8, 0], [4, 0, 8]]
    assert MIoUEvaluator(SimpleNamespace(num_classes=3)).compute() == {"seg/mIoU": None, "seg/mAcc": None, "seg/aAcc": None}


# --------------------------------------------------------------------------- torch.distributed


def _all_evaluators(det_ds: SimpleNamespace, kpt_ds: SimpleNamespace) -> list[tuple[object, list]]:
    """(evaluator, its per-image items) for every kind, with imperfect predictions."""
    det = [det_prediction(det_ds, i, jitter=2.0) for i in det_ds.ids]
    kpt = [kpt_prediction(kpt_ds, i, jitter=3.0) for i in kpt_ds.ids]
    sem_out, sem_tgt = _semantic_case()
    sem = [(sem_out[0], sem_tgt[0])] * 3
    return [(BboxEvaluator(det_ds), det), (SegmEvaluator(det_ds), det), (KeypointsEvaluator(kpt_ds), kpt),
            (MIoUEvaluator(SimpleNamespace(num_classes=3)), sem)]


class _FailingEvaluator(MIoUEvaluator):
    def compute(self) -> dict:
        raise ArithmeticError("boom")


def _dist_worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        pairs = _all_evaluators(load_dataset(Path(tmp) / "instances.json"), load_dataset(Path(tmp) / "person_keypoints.json"))
        for ev, items in pairs:
            for i in shard_indices(len(items), rank, world):
                ev.update([items[i][0]], [items[i][1]])
        metrics = finish([ev for ev, _ in pairs], DistInfo(rank=rank, world_size=world))
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(metrics))
        try:  # the main rank's failure reaches every rank instead of leaving them waiting
            finish([_FailingEvaluator(SimpleNamespace(num_classes=2))], DistInfo(rank=rank, world_size=world))
        except Exception as e:
            (Path(tmp) / f"error{rank}.txt").write_text(f"{type(e).__name__}: {e}")
    finally:
        torch_dist.destroy_process_group()


def test_finish_under_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    (tmp_path / "instances.json").write_text(json.dumps(detection_gt()))
    (tmp_path / "person_keypoints.json").write_text(json.dumps(keypoint_gt()))
    pairs = _all_evaluators(load_dataset(tmp_path / "instances.json"), load_dataset(tmp_path / "person_keypoints.json"))
    for ev, items in pairs:
        run(ev, items)
    expected = finish([ev for ev, _ in pairs], DistInfo())
    assert len(expected) == 6 + 6 + 6 + 3 and expected["seg/mIoU"] is not None

    mp.spawn(_dist_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
    assert (tmp_path / "error0.txt").read_text() == "ArithmeticError: boom"
    assert (tmp_path / "error1.txt").read_text() == "RuntimeError: evaluation failed on the main rank: ArithmeticError: boom"
