"""Pose estimation (Table 7): the top-down keypoint data, the SimpleBaseline family, the keypoint evaluator."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, evaluate_on_cpu
from PIL import Image

from dfd.data import DataError, DataNeeds, build_datasets
from dfd.data.keypoints import (
    COCO_SIGMAS,
    KEYPOINT_NAMES,
    CocoKeypoints,
    box_center_size,
    crop_matrix,
    flip_pairs,
    gaussian_targets,
    keypoint_options,
    warp,
)
from dfd.data.synthetic_keypoints import DETECTIONS, ensure_synthetic_keypoints
from dfd.engine.config import load_config
from dfd.engine.evaluators import KeypointsEvaluator, oks_nms, rescore
from dfd.models import build_model, get_family
from dfd.models.simplebaseline import (
    COCO_FLIP_PAIRS,
    SimpleBaselineOptions,
    flip_back,
    joints_mse_loss,
    max_locations,
    quarter_offset,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = {"input_size": [128, 96], "heatmap_size": [32, 24], "sigma": 2.0,
         "person_boxes": DETECTIONS, "synthetic": {"num_train": 8, "num_val": 4}}
STILL = {"shift_prob": 0.0, "half_body_prob": 0.0, "scale_factor": 0.0, "rot_prob": 0.0}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return ensure_synthetic_keypoints(tmp_path_factory.mktemp("kp") / "set", seed=0, num_train=8, num_val=4,
                                      min_side=112, max_side=144)


def _pair(root: Path, **kw):
    return build_datasets("synthetic_keypoints", root, needs=DataNeeds(pipeline="topdown"), keypoints={**SMALL, **kw})


# --------------------------------------------------------------------------- geometry and targets


def test_crop_matrix_is_mmpose_three_point_affine() -> None:
    """mmpose's get_affine_transform: the centre, the point half a width 'up' (rotated) and a third point at right
    angles map to the output centre, its top-centre and a point to its left; solved here by least squares."""
    center, size, rot, out = np.array([70.0, 55.0]), np.array([60.0, 80.0]), 30.0, (48, 64)
    t = math.radians(rot)
    src_dir = np.array([-math.sin(t) * -size[0] / 2, math.cos(t) * -size[0] / 2])  # rotate (0, -w/2) by t
    src = np.array([center, center + src_dir, center + src_dir + [src_dir[1], -src_dir[0]]])
    dst0 = np.array([out[0] / 2, out[1] / 2])
    dst_dir = np.array([0.0, -out[0] / 2])
    dst = np.array([dst0, dst0 + dst_dir, dst0 + dst_dir + [dst_dir[1], -dst_dir[0]]])
    a = np.linalg.lstsq(np.c_[src, np.ones(3)], dst, rcond=None)[0].T
    assert np.allclose(crop_matrix(center, size, rot, out)[:2], a, atol=1e-9)


def test_box_center_size_widens_to_the_aspect_and_pads() -> None:
    center, size = box_center_size([10, 20, 30, 80], 0.75, 1.25)
    assert np.allclose(center, [25, 60]) and np.allclose(size, [60 * 1.25, 80 * 1.25])
    _, size = box_center_size([0, 0, 90, 40], 0.75, 1.0)
    assert np.allclose(size, [90, 120])


def test_warp_reads_pixel_centres_like_cv2() -> None:
    image = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    assert torch.allclose(warp(image, np.eye(3), (5, 7)), image, atol=1e-4)
    shift = np.array([[1.0, 0, -2], [0, 1, -1], [0, 0, 1]])  # out(x, y) = in(x + 2, y + 1)
    out = warp(image, shift, (3, 4))
    assert torch.allclose(out, image[:, 1:4, 2:6], atol=1e-4)
    assert torch.all(warp(image, np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]]), (5, 7)) == 0)  # zeros outside


def test_gaussian_targets_follow_mmpose_msra() -> None:
    # stride 2: mu = trunc(p / 2 + 0.5); window |d| <= 3 sigma = 6; weight 0 when the window misses the map
    joints = np.array([[41.0, 21.0], [8.0, 8.0], [-20.0, 30.0], [100.0, 2.0], [-6.0, 10.0]])
    visible = np.array([1, 0, 1, 1, 1])
    maps, weight = gaussian_targets(joints, visible, (64, 48), (32, 24), 2.0)
    assert maps.shape == (5, 32, 24)
    assert weight.tolist() == [1, 0, 0, 0, 1]
    assert maps[0, 11, 21] == 1.0 and math.isclose(float(maps[0, 11, 22]), math.exp(-1 / 8), rel_tol=1e-6)
    assert maps[0, 11, 14] == 0 and maps[0, 11, 15] > 0  # |x - 21| <= 6 only
    assert maps[1:4].abs().sum() == 0
    assert maps[4, 5, :5].gt(0).all() and maps[4, 5, 5:].eq(0).all()  # mu_x = -2: columns 0..4 only


# --------------------------------------------------------------------------- the loaders


def test_synthetic_set_has_coco_quirks_and_consistent_sides(synthetic_root: Path) -> None:
    data = json.loads((synthetic_root / "annotations/person_keypoints_train2017.json").read_text())
    person = data["categories"][0]
    assert person["keypoints"] == list(KEYPOINT_NAMES) and len(person["skeleton"]) == 19
    anns = data["annotations"]
    assert any(a["iscrowd"] == 1 and isinstance(a["segmentation"]["counts"], list) for a in anns)
    assert any(a["iscrowd"] == 0 and a["num_keypoints"] == 0 for a in anns)  # a person without keypoints
    flags = {v for a in anns for v in a["keypoints"][2::3]}
    assert flags == {0, 1, 2}
    labelled = [np.reshape(a["keypoints"], (17, 3)) for a in anns if a["num_keypoints"] > 0]
    for kp in labelled:  # facing the camera: the person's left shoulder / hip lie right of the right ones
        for left, right in ((5, 6), (11, 12)):
            if kp[left, 2] and kp[right, 2]:
                assert kp[left, 0] > kp[right, 0]
    assert all(a["area"] > 0 and len(a["bbox"]) == 4 for a in anns)
    dets = json.loads((synthetic_root / DETECTIONS).read_text())
    assert dets and all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in dets)


def test_synthetic_set_is_deterministic(tmp_path: Path, synthetic_root: Path) -> None:
    other = ensure_synthetic_keypoints(tmp_path / "again", seed=0, num_train=8, num_val=4, min_side=112, max_side=144)
    for name in ("annotations/person_keypoints_val2017.json", DETECTIONS, "val2017/000001000002.jpg"):
        assert (other / name).read_bytes() == (synthetic_root / name).read_bytes()


def test_loader_items_and_crops(synthetic_root: Path) -> None:
    train, val = _pair(synthetic_root)
    assert len(train) > 0 and len(val) == sum(1 for _ in json.loads((synthetic_root / DETECTIONS).read_text()))
    image, target = train[0, 123]
    again, target2 = train[0, 123]
    assert torch.equal(image, again) and torch.equal(target["heatmaps"], target2["heatmaps"])  # (index, seed) fixes it
    assert image.shape == (3, 128, 96) and 0 <= image.min() and image.max() <= 1
    assert target["heatmaps"].shape == (17, 32, 24) and target["target_weight"].shape == (17,)
    assert target["flip_pairs"].tolist() == [list(p) for p in COCO_FLIP_PAIRS]
    assert flip_pairs(KEYPOINT_NAMES) == list(COCO_FLIP_PAIRS)
    assert train.num_classes == 1 and train.label_to_category == {1: 1} and list(train.keypoint_sigmas) == list(COCO_SIGMAS)
    _, gt_val = _pair(synthetic_root, use_gt_boxes_val=True)
    assert all(r["box_score"] == 1.0 for r in gt_val.records) and len(gt_val) != len(val)


def test_flip_mirrors_the_crop_and_swaps_left_and_right(synthetic_root: Path) -> None:
    plain, _ = _pair(synthetic_root, flip_prob=0.0, **STILL)
    flipped, _ = _pair(synthetic_root, flip_prob=1.0, **STILL)
    index = next(i for i, r in enumerate(plain.records) if r["joints"][5, 2] > 0 and r["joints"][6, 2] > 0)
    a, ta = plain[index, 1]
    b, tb = flipped[index, 1]
    # the mirrored image's crop is the crop mirrored about x = W / 2 (not (W - 1) / 2: mmpose's one-pixel shift)
    assert torch.allclose(b[..., 1:], a.flip(-1)[..., :-1], atol=2e-3)
    w = a.shape[-1]
    for left, right in COCO_FLIP_PAIRS:
        assert math.isclose(float(tb["joints"][left, 0]), w - float(ta["joints"][right, 0]), abs_tol=1e-3)
        assert math.isclose(float(tb["joints"][left, 1]), float(ta["joints"][right, 1]), abs_tol=1e-3)


def _write_set(root: Path, anns: list[dict], *, images: int = 1, drop_key: str | None = None) -> Path:
    """A hand-made person-keypoints set: ``images`` 60x50 images, the given annotations, a detection file."""
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        infos = []
        for i in range(images):
            Image.new("RGB", (50, 60), (120, 130, 140)).save(root / f"{split}2017" / f"{i + 1:012d}.jpg")
            infos.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 50, "height": 60})
        data = {"images": infos, "annotations": anns,
                "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}]}
        if drop_key:
            data.pop(drop_key)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(data))
    (root / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "score": 0.9}]))
    return root


def _ann(ann_id: int, joints: list[tuple[float, float, int]], **kw) -> dict:
    kps = [v for j in joints for v in j] + [0] * (51 - 3 * len(joints))
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "area": 400.0, "iscrowd": 0,
            "keypoints": kps, "num_keypoints": sum(1 for j in joints if j[2] > 0), **kw}


def _load(root: Path, **kw):
    opts = keypoint_options({"input_size": [64, 48], "heatmap_size": [16, 12], "person_boxes": "dets.json", **kw})
    return CocoKeypoints(root, "train", opts, train=True), CocoKeypoints(root, "val", opts, train=False)


def test_loader_skips_crowds_and_people_without_visible_joints(tmp_path: Path) -> None:
    anns = [_ann(1, [(10, 10, 2), (12, 10, 1)]),
            _ann(2, []),                                                     # no labelled joint
            _ann(3, [(0, 0, 0)] * 17, num_keypoints=0),
            {**_ann(4, [(10, 10, 2)]), "iscrowd": 1},                        # crowd region
            {**_ann(5, [(10, 10, 2)]), "bbox": [60, 70, 5, 5]},              # box outside the image
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1,
             "segmentation": {"counts": [3000], "size": [60, 50]}, "area": 10}]   # crowd without keypoints
    train, val = _load(_write_set(tmp_path, anns))
    assert [r["joints"][:2, 2].tolist() for r in train.records] == [[1, 1]]  # v = 1 and 2 both count as labelled
    assert len(val) == 1 and val.records[0]["box_score"] == 0.9
    _, target = train[0, 0]
    assert target["target_weight"][:2].tolist() == [1, 1] and target["target_weight"][2:].sum() == 0


def test_loader_errors_name_the_file_and_key(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "a", [_ann(1, [(10, 10, 2)])])
    (root / "val2017" / "000000000001.jpg").unlink()
    with pytest.raises(DataError, match=r"missing from .*val2017: 000000000001\.jpg"):
        _load(root)
    with pytest.raises(DataError, match="lacks the key.*'annotations'"):
        _load(_write_set(tmp_path / "b", [], drop_key="annotations"))
    bad = _ann(7, [(10, 10, 2)])
    bad["keypoints"] = bad["keypoints"][:-3]
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 7\) 'keypoints' must be a list of 51"):
        _load(_write_set(tmp_path / "c", [bad]))
    root = _write_set(tmp_path / "d", [_ann(1, [(10, 10, 2)])])
    (root / "dets.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}]))
    with pytest.raises(DataError, match=r"person_boxes: .*dets\.json entry \[0\] lacks 'category_id'"):
        _load(root)
    (root / "dets.json").write_text(json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}]))
    with pytest.raises(DataError, match="image_id 9"):
        _load(root)
    (root / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 1.0}]))
    with pytest.raises(DataError, match=r"entry \[0\] has bbox \[0, 0, 5\]"):
        _load(root)
    with pytest.raises(DataError, match="person_boxes: file .*nothere.json does not exist"):
        _load(root, person_boxes="nothere.json")
    with pytest.raises(DataError, match=r"data.keypoints: unknown key\(s\) sigmaa"):
        keypoint_options({"sigmaa": 2})


def test_config_groups_compose(tmp_path: Path) -> None:
    cfg = load_config(compose_config(["scale=full", "student=simplebaseline_mobilenetv2", "teacher=simplebaseline_r50",
                                      "distill=dfd", "data=synthetic_keypoints", "schedule=pose_210e",
                                      "teacher.checkpoint=null", "teacher.weights=ResNet50_Weights.IMAGENET1K_V1"]))
    assert cfg.data.keypoints.input_size == [128, 96] and cfg.data.batch_size == 4
    assert (cfg.schedule.optimizer, cfg.schedule.lr, cfg.schedule.epochs, list(cfg.schedule.steps)) == ("adam", 5e-4, 210, [170, 200])
    assert cfg.student.backbone == "mobilenet_v2" and cfg.teacher.backbone == "resnet50"
    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes(b"x")
    full = load_config(compose_config(["scale=full", "teacher=simplebaseline_r50", "student=simplebaseline_mobilenetv2",
                                       "data=coco_keypoints", f"data.root={tmp_path}", "schedule=pose_210e",
                                       "distill=cwd", "distill.levels=[heatmaps]", f"teacher.checkpoint={ckpt}"]))
    assert full.data.batch_size == 64 and full.data.keypoints.sigma == 2.0 and full.data.keypoints.oks_thr == 0.9
    assert full.data.keypoints.person_boxes.endswith("COCO_val2017_detections_AP_H_56_person.json")
    assert (full.distill.cwd.tau, full.distill.cwd.weight, full.schedule.clip_grad) == (1.0, 5.0, None)


# --------------------------------------------------------------------------- the model


def _small_model(**kw):
    torch.manual_seed(0)
    return build_model(SimpleBaselineOptions(backbone="resnet18", deconv_channels=[16, 16, 16], **kw), 1)


def test_joints_mse_loss_is_mmpose_per_joint_mean() -> None:
    pred, target, weight = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), torch.tensor([[1.0, 0, 1], [0, 1, 1]])
    expected = sum(((pred[:, k] - target[:, k]) ** 2 * weight[:, k, None, None]).mean() for k in range(3)) / 3
    assert torch.isclose(joints_mse_loss(pred, target, weight), expected)


def test_decoding_argmax_and_quarter_offset() -> None:
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    heat = torch.stack([torch.exp(-((xs - 5.3) ** 2 + (ys - 8.8) ** 2) / 8), torch.exp(-((xs - 1) ** 2 + (ys - 3) ** 2) / 8),
                        -torch.ones(16, 12)])[None]
    xy, score = max_locations(heat)
    assert xy[0, 0].tolist() == [5, 9] and xy[0, 2].tolist() == [-1, -1]  # a map with max <= 0 gives -1
    shifted = quarter_offset(heat, xy)
    assert shifted[0, 0].tolist() == [5.25, 8.75]
    assert shifted[0, 1].tolist() == [1, 3]  # x = 1 is not inside 1 < x < W - 1: no shift


def test_flip_back_swaps_pairs_and_shifts() -> None:
    heat = torch.rand(1, 17, 8, 6)
    back = flip_back(flip_back(heat, COCO_FLIP_PAIRS, False), COCO_FLIP_PAIRS, False)
    assert torch.equal(back, heat)
    once = flip_back(heat, COCO_FLIP_PAIRS, True)
    assert torch.equal(once[0, 5, :, 1:], heat[0, 6].flip(-1)[:, :-1]) and torch.equal(once[..., 0], once[..., 1])


def test_model_contract_on_the_topdown_data(synthetic_root: Path) -> None:
    family = get_family("simplebaseline")
    assert family.task == "keypoints" and family.pipeline == "topdown" and family.levels == ("backbone", "deconv", "heatmaps")
    train, val = _pair(synthetic_root)
    model = _small_model()
    images, targets = zip(*[train[i, i] for i in range(2)])
    batch = model.prepare(list(images), list(targets), "cpu")
    model.train()
    out = model.train_step(batch)
    assert set(out.losses) == {"heatmap_mse"} and out.losses["heatmap_mse"].requires_grad
    assert out.maps["backbone"].shape == (2, 512, 4, 3) and out.maps["deconv"].shape == (2, 16, 32, 24)
    assert out.maps["heatmaps"].shape == (2, 17, 32, 24)
    model.eval()
    with torch.no_grad():
        assert list(model.distill_maps(batch, ["deconv"])) == ["deconv"]
        preds = model.predict(model.prepare([val[0][0]], [val[0][1]], "cpu"))
    assert preds[0]["keypoints"].shape == (1, 17, 3) and math.isclose(float(preds[0]["scores"]), val.records[0]["box_score"], rel_tol=1e-6)
    odd = model.prepare([torch.rand(3, 100, 76)], [{}], "cpu")  # no padding: flip test mirrors the crop itself
    assert odd.images.shape[-2:] == (100, 76)
    student = build_model(SimpleBaselineOptions(backbone="mobilenet_v2", deconv_channels=[8, 8, 8]), 1)
    assert student.forward_maps(torch.zeros(1, 3, 256, 192))["backbone"].shape == (1, 1280, 8, 6)


# --------------------------------------------------------------------------- the evaluator


def test_rescore_and_oks_nms() -> None:
    pose = np.c_[np.random.default_rng(0).uniform(0, 50, (17, 2)), np.full(17, 0.5)]
    pose[:3, 2] = 0.1  # below vis_thr 0.2: left out of the mean
    assert math.isclose(rescore(pose, 0.8, 0.2), 0.4)
    assert rescore(np.zeros((17, 3)), 1.0, 0.2) == 0.0
    far = pose.copy()
    far[:, :2] += 40
    poses = np.stack([pose, pose + [[0.5, 0, 0]], far])
    keep = oks_nms(poses, np.array([0.5, 0.9, 0.7]), np.full(3, 2500.0), 0.9)
    assert keep == [1, 2]  # the best of the two near-duplicates, and the distant pose


class _Perfect:
    """Predictions made from the ground truth: each crop's labelled joints in crop pixels, score 1."""

    def __call__(self, target) -> dict:
        joints = target["joints"].clone()
        joints[:, 2] = 1.0
        return {"keypoints": joints[None], "scores": torch.tensor([target["box_score"]]), "labels": torch.ones(1, dtype=torch.int64)}


def test_evaluator_scores_ground_truth_poses_100(synthetic_root: Path) -> None:
    _, val = _pair(synthetic_root, use_gt_boxes_val=True)
    ev = KeypointsEvaluator(val)
    items = [val[i] for i in range(len(val))]
    ev.update([_Perfect()(t) for _, t in items], [t for _, t in items])
    metrics = ev.compute()
    assert metrics["keypoints/AP"] == pytest.approx(100.0) and metrics["keypoints/AR"] == pytest.approx(100.0)
    # left and right swapped: most joints miss, AP falls
    ev2 = KeypointsEvaluator(val)
    swapped = []
    for _, t in items:
        p = _Perfect()(t)
        order = list(range(17))
        for a, b in COCO_FLIP_PAIRS:
            order[a], order[b] = b, a
        p["keypoints"] = p["keypoints"][:, order]
        swapped.append(p)
    ev2.update(swapped, [t for _, t in items])
    assert ev2.compute()["keypoints/AP"] < 60.0


def test_evaluator_merges_shards_and_keeps_every_image(synthetic_root: Path) -> None:
    _, val = _pair(synthetic_root, use_gt_boxes_val=True)
    items = [val[i] for i in range(len(val))]
    shards = [KeypointsEvaluator(val), KeypointsEvaluator(val)]
    for k, ev in enumerate(shards):
        part = items[k::2]
        ev.update([_Perfect()(t) for _, t in part], [t for _, t in part])
    whole = KeypointsEvaluator(val)
    whole.merge([ev.state() for ev in shards])
    assert whole.compute()["keypoints/AP"] == pytest.approx(100.0)
    half = shards[0].compute()["keypoints/AR"]  # half the people never predicted: recall falls
    assert half < 80.0


def test_detected_boxes_path_evaluates_a_model(synthetic_root: Path) -> None:
    _, val = _pair(synthetic_root)
    metrics = evaluate_on_cpu(_small_model(), val, "keypoints")
    assert set(metrics) == set(KeypointsEvaluator.metrics) and metrics["keypoints/AP"] is not None


@pytest.mark.slow
def test_teacher_then_distilled_students_train_end_to_end(tmp_path: Path) -> None:
    """scripts/train.py: a smoke teacher, then CWD (on the heatmaps) and DFD students, each scored by COCOeval."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DFD_CACHE": str(tmp_path / "cache")}
    common = ["teacher=simplebaseline_r50", "student=simplebaseline_mobilenetv2", "data=synthetic_keypoints",
              "trainer.threads=1", "trainer.progress=false", "trainer.max_iters=4", f"runs_root={tmp_path}",
              "data.keypoints.synthetic.num_train=8", "data.keypoints.synthetic.num_val=4"]
    runs = {"teacher": ["train=teacher", "distill=none"]}
    ckpt = f"teacher.checkpoint={tmp_path / 'teacher' / 'checkpoints' / 'last.pth'}"
    runs["cwd"] = ["distill=cwd", "distill.levels=[heatmaps]", ckpt]
    runs["dfd"] = ["distill=dfd", ckpt]
    for name, extra in runs.items():
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *common, *extra, f"hydra.run.dir={tmp_path / name}"]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
        assert metrics["keypoints/AP"] is not None, metrics
