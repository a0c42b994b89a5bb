"""Tests for dfd.data: synthetic COCO generation, the COCO loader, transforms and the dataset registry."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from dfd.data import (
    DATASETS,
    CocoDetection,
    DataError,
    DataNeeds,
    DatasetEntry,
    ScaleToFit,
    build_datasets,
    build_transforms,
    collate,
    data_kinds,
    ensure_synthetic_coco,
    fit_scale,
    fit_size,
    generate_synthetic_coco,
    synthetic_cache_root,
)
from dfd.data import synthetic as synthetic_module
from dfd.errors import ComponentNotImplemented

SMALL = {"num_train": 12, "num_val": 6}
# pycocotools' mask decoding trips a numpy 2 deprecation warning; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _ann_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


def _snapshot(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every dataset file (the stamp included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_coco(tmp_path_factory.mktemp("synth") / "coco", seed=0, **SMALL)


# --------------------------------------------------------------------------- synthetic generation


def test_generation_is_deterministic(tmp_path: Path, synth_root: Path) -> None:
    again = generate_synthetic_coco(tmp_path / "again", seed=0, **SMALL)
    first, second = _snapshot(synth_root), _snapshot(again)
    assert first.keys() == second.keys()
    assert len([k for k in first if k.endswith(".jpg")]) == SMALL["num_train"] + SMALL["num_val"]
    for name in first:
        assert first[name] == second[name], name

    other = generate_synthetic_coco(tmp_path / "other", seed=1, **SMALL)
    assert _ann_file(other, "train").read_bytes() != _ann_file(synth_root, "train").read_bytes()
    assert _snapshot(other)["train2017/000000000001.jpg"] != first["train2017/000000000001.jpg"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_dataset_has_coco_quirks(synth_root: Path, split: str) -> None:
    coco = _load_coco(_ann_file(synth_root, split))
    cat_ids = sorted(coco.getCatIds())
    assert len(cat_ids) >= 4
    assert cat_ids != list(range(1, len(cat_ids) + 1)), "category ids should be non-contiguous"
    assert all(c["name"] and c["supercategory"] for c in coco.loadCats(cat_ids))

    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == SMALL[f"num_{split}"]
    sizes = {(img["height"], img["width"]) for img in images}
    assert len(sizes) > 1 and all(128 <= h <= 160 and 128 <= w <= 160 for h, w in sizes)
    modes = {Image.open(synth_root / f"{split}2017" / img["file_name"]).mode for img in images}
    assert modes == {"RGB", "L"}, "expected colour and grayscale images"
    assert any(not coco.getAnnIds(imgIds=[img["id"]]) for img in images), "expected an image without annotations"

    anns = coco.loadAnns(coco.getAnnIds())
    crowd = [a for a in anns if a["iscrowd"]]
    plain = [a for a in anns if not a["iscrowd"]]
    assert crowd, "expected a crowd annotation"
    for a in crowd:
        assert isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], list)
        assert coco.annToMask(a).sum() == a["area"]
    for a in plain:
        img = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        assert coco.annToMask(a).sum() == a["area"]
    areas = [a["area"] for a in plain]
    assert any(a < 32**2 for a in areas), "no small object"
    assert any(32**2 <= a <= 96**2 for a in areas), "no medium object"
    assert any(a > 96**2 for a in areas), "no large object"


def test_ensure_caches_and_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    assert ensure_synthetic_coco(root, **SMALL) == root
    stamp = json.loads((root / "synthetic.json").read_text())
    assert stamp["params"]["num_train"] == 12 and "version" in stamp
    files = [root / "synthetic.json", _ann_file(root, "train"), root / "train2017" / "000000000001.jpg"]
    before = [p.stat().st_mtime_ns for p in files]
    inode = root.stat().st_ino

    assert ensure_synthetic_coco(root, **SMALL) == root
    assert [p.stat().st_mtime_ns for p in files] == before and root.stat().st_ino == inode

    old_json = _ann_file(root, "train").read_bytes()
    ensure_synthetic_coco(root, seed=3, **SMALL)
    assert json.loads((root / "synthetic.json").read_text())["params"]["seed"] == 3
    assert _ann_file(root, "train").read_bytes() != old_json

    # An incomplete directory (a deleted image) regenerates even though the stamp matches.
    (root / "val2017" / "000001000002.jpg").unlink()
    ensure_synthetic_coco(root, seed=3, **SMALL)
    assert (root / "val2017" / "000001000002.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"], "temporary directories left behind"


def test_ensure_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        ensure_synthetic_coco(tmp_path, **SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_concurrent_writer_loses_rename_race_gracefully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "coco"
    real_write_split = synthetic_module._write_split
    raced = []

    def write_split_with_rival(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_write_split(*args, **kwargs)
        if not raced:  # another process finishes and installs while we are still writing
            raced.append(True)
            generate_synthetic_coco(root, **SMALL)

    monkeypatch.setattr(synthetic_module, "_write_split", write_split_with_rival)
    ensure_synthetic_coco(root, **SMALL)
    assert raced
    assert synthetic_module._is_complete(root, synthetic_module._params(0, 12, 6, 128, 160, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_bad_synthetic_parameters(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="min_side"):
        ensure_synthetic_coco(tmp_path / "x", min_side=200, max_side=100)


# --------------------------------------------------------------------------- the COCO loader


def _write_image(path: Path, w: int, h: int, mode: str = "RGB") -> None:
    color = 128 if mode == "L" else (200, 30, 30)
    Image.new(mode, (w, h), color).save(path, format="JPEG", quality=95)


@pytest.fixture()
def handmade(tmp_path: Path) -> Path:
    """A tiny COCO set: non-contiguous category ids, a compressed-RLE crowd, an empty grayscale
    image, a degenerate (w=0) box, a box crossing the image border and a crowd-only image."""
    root = tmp_path / "hand"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        _write_image(root / f"{split}2017" / "a.jpg", 40, 30)
        _write_image(root / f"{split}2017" / "b.jpg", 20, 24, mode="L")
        _write_image(root / f"{split}2017" / "c.jpg", 32, 32)
    crowd_mask = np.zeros((30, 40), dtype=np.uint8, order="F")
    crowd_mask[20:28, 2:12] = 1
    rle = mask_utils.encode(crowd_mask)
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "b.jpg", "width": 20, "height": 24},
            {"id": 11, "file_name": "c.jpg", "width": 32, "height": 32},
        ],
        "categories": [
            {"id": 9, "name": "nine", "supercategory": "x"},
            {"id": 2, "name": "two", "supercategory": "x"},
            {"id": 5, "name": "five", "supercategory": "y"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0,
             "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]]},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [[30, 20, 50, 20, 50, 40, 30, 40]]},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [5, 5, 0, 4], "area": 0, "iscrowd": 0,
             "segmentation": [[5, 5, 5, 5, 5, 9]]},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [2, 20, 10, 8], "area": 80, "iscrowd": 1,
             "segmentation": rle},
            {"id": 5, "image_id": 11, "category_id": 2, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 1,
             "segmentation": rle | {"size": [32, 32]}},
        ],
    }
    for split in ("train", "val"):
        _ann_file(root, split).write_text(json.dumps(data))
    return root


def test_loader_on_handmade_coco(handmade: Path) -> None:
    ds = CocoDetection(handmade, "val")
    assert ds.num_classes == 3
    assert ds.label_to_category == {1: 2, 2: 5, 3: 9}
    assert ds.category_names == ["two", "five", "nine"]
    assert ds.ids == [3, 7, 11] and len(ds) == 3

    image, target = ds[1]  # image 7
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (40, 30)
    assert target["image_id"] == 7
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 3]
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].dtype == torch.float32
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY and target["boxes"].canvas_size == (30, 40)
    assert "masks" not in target
    assert target["boxes"].tolist() == [[1, 2, 11, 7], [30, 20, 40, 30]]  # second one clipped
    assert target["orig_size"].tolist() == [30, 40] and target["size"].tolist() == [30, 40]

    gray, empty = ds[0]  # image 3: grayscale, no annotations
    assert gray.mode == "RGB" and gray.size == (20, 24)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)

    _, crowd_only = ds[2]
    assert crowd_only["boxes"].shape == (0, 4)

    train = CocoDetection(handmade, "train", filter_empty=True)
    assert train.ids == [7]

    with contextlib.redirect_stdout(io.StringIO()):
        ds.coco.loadRes([{"image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 5], "score": 0.9}])


def test_loader_with_transforms(handmade: Path) -> None:
    ds = CocoDetection(handmade, "val", build_transforms(False, min_size=60, max_size=100))
    image, target = ds[1]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 60, 80)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (60, 80)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target["size"].tolist() == [60, 80] and target["orig_size"].tolist() == [30, 40]
    assert torch.allclose(target["boxes"], torch.tensor([[2.0, 4, 22, 14], [60, 40, 80, 60]]))
    gray, _ = ds[0]
    assert gray.shape[0] == 3


def test_error_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root: directory .*nowhere.* does not exist"):
        CocoDetection(tmp_path / "nowhere", "train")


def test_error_missing_annotation_file(handmade: Path) -> None:
    _ann_file(handmade, "val").unlink()
    with pytest.raises(DataError, match=r"instances_val2017\.json does not exist"):
        CocoDetection(handmade, "val")


def test_error_truncated_json(handmade: Path) -> None:
    path = _ann_file(handmade, "train")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"instances_train2017\.json is not valid JSON \(truncated"):
        CocoDetection(handmade, "train")


def test_error_missing_key(handmade: Path) -> None:
    path = _ann_file(handmade, "train")
    data = json.loads(path.read_text())
    del data["categories"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_train2017\.json lacks the key\(s\) 'categories'"):
        CocoDetection(handmade, "train")


def test_error_unknown_category(handmade: Path) -> None:
    path = _ann_file(handmade, "train")
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[0\].*category_id 4"):
        CocoDetection(handmade, "train")


def test_error_missing_image_file(handmade: Path) -> None:
    (handmade / "train2017" / "b.jpg").unlink()
    (handmade / "train2017" / "c.jpg").unlink()
    with pytest.raises(DataError, match=r"2 image file\(s\) referenced by .*instances_train2017\.json.*b\.jpg, c\.jpg"):
        CocoDetection(handmade, "train")


def test_synthetic_data_reads_through_loader(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "train")
    assert ds.num_classes == 4 and len(ds) == SMALL["num_train"]
    kept = CocoDetection(synth_root, "train", filter_empty=True)
    assert 0 < len(kept) < len(ds)
    assert ds.aspect_groups() == [int(ds.coco.imgs[i]["width"] > ds.coco.imgs[i]["height"]) for i in ds.ids]
    assert set(ds.aspect_groups()) == {0, 1}
    for i in range(len(kept)):
        image, target = kept[i]
        assert image.mode == "RGB" and len(target["labels"]) > 0
        assert target["labels"].min() >= 1 and target["labels"].max() <= 4
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()




def test_masks_follow_the_image(handmade: Path) -> None:
    raw = CocoDetection(handmade, "val", with_masks=True)
    _, target = raw[1]  # image 7: two usable polygons, a degenerate box and a crowd region left out
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (2, 30, 40)
    anns = {a["id"]: a for a in raw.coco.loadAnns(raw.coco.getAnnIds(imgIds=[7]))}
    assert torch.equal(masks[0], torch.from_numpy(raw.coco.annToMask(anns[1])))
    assert masks[1].sum() > 0 and masks[1][:20].sum() == 0  # the second polygon starts at y=20

    flipped = CocoDetection(handmade, "val", build_transforms(True, min_size=60, max_size=100, flip_prob=1.0),
                            with_masks=True)
    _, out = flipped[1, 5]
    assert out["masks"].shape == (2, 60, 80) and out["masks"].dtype == torch.uint8
    expected = v2.functional.resize(tv_tensors.Mask(masks.flip(-1)), [60, 80])  # nearest for masks
    assert torch.equal(out["masks"], expected)
    for mask, box in zip(out["masks"], out["boxes"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box[0] - 1 <= xs.min() and xs.max() <= box[2] and box[1] - 1 <= ys.min() and ys.max() <= box[3]
    _, crowd_only = flipped[2]
    assert crowd_only["masks"].shape == (0, 60, 60) and crowd_only["boxes"].shape == (0, 4)


def test_error_annotation_without_segmentation(handmade: Path) -> None:
    path = _ann_file(handmade, "val")
    data = json.loads(path.read_text())
    del data["annotations"][1]["segmentation"]
    path.write_text(json.dumps(data))
    ds = CocoDetection(handmade, "val", with_masks=True)
    with pytest.raises(DataError, match=r"instances_val2017\.json: annotation id 2 \(image id 7\).*segmentation"):
        ds[1]
    assert len(CocoDetection(handmade, "val")[1][1]["boxes"]) == 2  # boxes alone do not need it


def test_error_aspect_groups_without_sizes(handmade: Path) -> None:
    path = _ann_file(handmade, "train")
    data = json.loads(path.read_text())
    del data["images"][1]["height"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_train2017\.json: image id 3 \(b\.jpg\) needs.*'height'"):
        CocoDetection(handmade, "train").aspect_groups()


def test_seeded_items_are_pure_and_leave_the_global_rng(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "train", build_transforms(True, min_size=64, max_size=80), filter_empty=True)
    plain = CocoDetection(synth_root, "train", build_transforms(False, min_size=64, max_size=80), filter_empty=True)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    image, target = ds[0, 77]
    assert torch.equal(torch.get_rng_state(), state), "__getitem__ changed the global RNG"
    again, target_again = ds[[0, 77]]
    assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])

    unflipped = plain[0][1]["boxes"]
    flips = []
    for seed in range(24):
        image, target = ds[0, seed]
        height, width = target["size"].tolist()
        boxes = target["boxes"]
        assert tuple(image.shape[-2:]) == (height, width) and boxes.canvas_size == (height, width)
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
        flips.append(not torch.allclose(boxes, unflipped))
    assert 0 < sum(flips) < len(flips), "a 0.5 flip should both flip and keep over 24 seeds"
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- transforms


RESIZE_CASES = [
    ((30, 40), 60, 100),
    ((480, 640), 800, 1333),
    ((100, 400), 800, 1333),  # the long side binds: scale = 1333 / 400
    ((600, 1000), 800, 1333),  # floor(600 * 1.333) = 799
]


@pytest.mark.parametrize(("hw", "min_size", "max_size"), RESIZE_CASES)
def test_floor_rounding_is_torchvisions_detection_resize(hw: tuple[int, int], min_size: int, max_size: int) -> None:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    h, w = hw
    assert fit_scale(h, w, min_size, max_size) == min(min_size / min(hw), max_size / max(hw))
    image = torch.rand(3, h, w)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, w, h]])
    out, target = ScaleToFit(min_size, max_size, "floor")(
        tv_tensors.Image(image), {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=hw)}
    )
    ref = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    ref_image, ref_target = ref.resize(image, {"boxes": boxes.clone()})
    assert tuple(out.shape) == tuple(ref_image.shape) and fit_size(h, w, min_size, max_size, "floor") == out.shape[-2:]
    assert torch.equal(out.as_subclass(torch.Tensor), ref_image)
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), ref_target["boxes"])
    assert target["boxes"].canvas_size == tuple(ref_image.shape[-2:])


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "expected"),
    [  # mmcv rescale_size: (int(w * s + 0.5), int(h * s + 0.5)), s = min(800 / short, 1333 / long)
        ((30, 40), 60, 100, (60, 80)),
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 5 / 3 = 1066.67
        ((375, 500), 800, 1333, (800, 1067)),  # 500 * 32 / 15 = 1066.67
        ((100, 400), 800, 1333, (333, 1333)),  # 100 * 3.3325 = 333.25
        ((600, 1000), 800, 1333, (800, 1333)),  # 600 * 1.333 = 799.8
    ],
)
def test_round_rounding_is_mmcvs_rescale_size(
    hw: tuple[int, int], min_size: int, max_size: int, expected: tuple[int, int]
) -> None:
    assert fit_size(*hw, min_size, max_size) == expected
    boxes = tv_tensors.BoundingBoxes([[1.0, 2.0, 11.0, 7.0]], format="XYXY", canvas_size=hw)
    out, mask, target_boxes = ScaleToFit(min_size, max_size)(
        tv_tensors.Image(torch.rand(3, *hw)), tv_tensors.Mask(torch.ones(1, *hw, dtype=torch.uint8)), boxes
    )
    assert out.shape[-2:] == expected and mask.shape[-2:] == expected and bool(mask.all())
    sy, sx = expected[0] / hw[0], expected[1] / hw[1]
    assert torch.allclose(target_boxes.as_subclass(torch.Tensor), torch.tensor([[sx, 2 * sy, 11 * sx, 7 * sy]]))


def test_bad_transform_arguments() -> None:
    with pytest.raises(ValueError, match="rounding"):
        fit_size(10, 10, 8, 16, "ceil")
    with pytest.raises(ValueError, match="rounding"):
        ScaleToFit(8, 16, "ceil")
    with pytest.raises(ValueError, match="positive"):
        ScaleToFit(0, 16)


def test_build_transforms_steps_and_flip() -> None:
    names = lambda c: [type(t).__name__ for t in c.transforms]  # noqa: E731
    tail = ["ScaleToFit", "ClampBoundingBoxes", "RecordSize"]
    assert names(build_transforms(True, min_size=8, max_size=16)) == ["ToImage", "ToDtype", "RandomHorizontalFlip", *tail]
    assert names(build_transforms(False, min_size=8, max_size=16)) == ["ToImage", "ToDtype", *tail]
    assert names(build_transforms(True, min_size=8, max_size=16, flip_prob=0.0)) == ["ToImage", "ToDtype", *tail]

    pil = Image.new("L", (40, 30), 255).convert("RGB")
    pil.putpixel((0, 0), (255, 0, 0))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[1.0, 2.0, 11.0, 7.0], [30.0, 0.0, 40.0, 3.0]], format="XYXY",
                                          canvas_size=(30, 40)),
        "labels": torch.tensor([1, 2]),
        "size": torch.tensor([30, 40]),
    }
    flip = build_transforms(True, min_size=30, max_size=40, flip_prob=1.0)  # scale 1: no resize
    image, out = flip(pil, target)
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert image[:, 0, 39].tolist() == [1.0, 0.0, 0.0] and float(image.max()) == 1.0
    assert out["boxes"].tolist() == [[29.0, 2.0, 39.0, 7.0], [0.0, 0.0, 10.0, 3.0]]
    assert out["labels"] is target["labels"] and out["size"].tolist() == [30, 40]

    image, out = build_transforms(False, min_size=15, max_size=40)(pil, target)
    assert image.shape == (3, 15, 20) and out["size"].tolist() == [15, 20]
    assert out["boxes"].tolist() == [[0.5, 1.0, 5.5, 3.5], [15.0, 0.0, 20.0, 1.5]]


# --------------------------------------------------------------------------- registry and batching


def test_collate(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "val", build_transforms(False, min_size=64, max_size=80))
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert [t["image_id"] for t in targets] == ds.ids[:2]


def test_build_datasets(synth_root: Path, handmade: Path) -> None:
    train, val = build_datasets("synthetic", synth_root, min_size=64, max_size=80, synthetic={"seed": 0, **SMALL})
    assert len(train) < SMALL["num_train"] and len(val) == SMALL["num_val"]  # empty train images dropped
    image, target = train[0, 3]
    assert isinstance(image, tv_tensors.Image) and image.shape[0] == 3 and len(target["boxes"]) > 0
    assert "masks" not in target and max(image.shape[-2:]) <= 80

    train, val = build_datasets("coco", handmade, min_size=60, max_size=100, filter_empty_train=False,
                                needs=DataNeeds(target_keys=("boxes", "labels", "masks")), rounding="floor")
    assert len(train) == 3 and val.num_classes == 3 and train.with_masks and val.with_masks
    assert val[1][1]["masks"].shape == (2, 60, 80)


def test_build_datasets_errors(synth_root: Path, handmade: Path) -> None:
    with pytest.raises(DataError, match=r"data\.kind.*'lvis'.*synthetic, coco, cityscapes, synthetic_cityscapes, coco_keypoints"):
        build_datasets("lvis", handmade, min_size=60, max_size=100)
    with pytest.raises(DataError, match=r"data\.root: not set"):
        build_datasets("coco", None, min_size=60, max_size=100)
    with pytest.raises(DataError, match=r"data\.synthetic.*bogus"):
        build_datasets("synthetic", synth_root, min_size=64, max_size=80, synthetic={"bogus": 1})
    with pytest.raises(DataError, match=r"data\.rounding"):
        build_datasets("coco", handmade, min_size=60, max_size=100, rounding="ceil")
    with pytest.raises(DataError, match=r"data\.kind='coco' serves the detection.*the pose family trains on the 'topdown'"):
        build_datasets("coco", handmade, needs=DataNeeds(pipeline="topdown"), family="the pose family")
    with pytest.raises(ComponentNotImplemented, match=r"data\.kind='stub' is not implemented yet: no loader"):
        DATASETS["stub"] = DatasetEntry("stub", "a kind declared before its loader", implemented=False, reason="no loader")
        try:
            build_datasets("stub", handmade)
        finally:
            del DATASETS["stub"]


def test_registry_entries() -> None:
    kinds = ["synthetic", "coco", "cityscapes", "synthetic_cityscapes", "coco_keypoints", "synthetic_keypoints"]
    assert data_kinds() == list(DATASETS) == data_kinds(implemented_only=True) == kinds
    assert not DATASETS["synthetic"].needs_root and DATASETS["coco"].needs_root
    # every synthetic kind names a real twin of the same pipelines, which reads data.root
    twins = {name: entry.twin for name, entry in DATASETS.items() if entry.twin}
    assert twins == {"synthetic": "coco", "synthetic_cityscapes": "cityscapes", "synthetic_keypoints": "coco_keypoints"}
    assert all(DATASETS[t].needs_root and DATASETS[t].pipelines == DATASETS[s].pipelines for s, t in twins.items())
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.summary
        assert entry.implemented == (entry.builder is not None) and entry.implemented == (not entry.reason)


def test_synthetic_without_root_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFD_CACHE", str(tmp_path))
    params = {"seed": 2, **SMALL}
    train, _ = build_datasets("synthetic", None, min_size=64, max_size=80, synthetic=params)
    assert train.root == synthetic_cache_root(params) and train.root.parent == tmp_path / "synthetic_coco"
    assert synthetic_cache_root(params) == synthetic_cache_root({**params, "max_objects": 5})  # defaults filled in
    assert synthetic_cache_root(params) != synthetic_cache_root({**params, "seed": 3})


def test_loader_output_ignores_workers_and_resumes(synth_root: Path) -> None:
    from torch.utils.data import DataLoader

    from dfd.data import EpochBatchSampler

    ds = CocoDetection(synth_root, "train", build_transforms(True, min_size=48, max_size=64))
    groups = ds.aspect_groups()

    def run(workers: int, start: int = 0) -> list[tuple[int, torch.Tensor]]:
        sampler = EpochBatchSampler(len(ds), 2, seed=3, epoch=1, start=start, groups=groups)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return [(t["image_id"], t["boxes"]) for _, targets in loader for t in targets]

    torch.manual_seed(0)
    serial = run(0)
    torch.manual_seed(99)  # the global RNG plays no part
    parallel = run(2)
    assert [i for i, _ in serial] == [i for i, _ in parallel]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(serial, parallel))
    tail = run(0, start=2)
    assert [i for i, _ in tail] == [i for i, _ in serial[4:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tail, serial[4:]))


def test_data_package_is_self_contained() -> None:
    import dfd.data

    for path in Path(dfd.data.__file__).parent.glob("*.py"):
        text = path.read_text()
        for other in ("dfd.engine", "dfd.models", "dfd.distill"):
            assert other not in text, f"{path.name} imports {other}"


# --------------------------------------------------------------------------- issue 9, item 6: bad data found before training


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "3"])
def test_issue9_6_a_non_finite_box_names_its_annotation_and_image(handmade: Path, bad) -> None:
    path = _ann_file(handmade, "train")
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"][2] = bad  # annotation id 1, image id 7 (a.jpg)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    with pytest.raises(DataError, match=r"instances_train2017\.json: annotation id 1 \(image id 7, file a\.jpg\) has bbox"):
        CocoDetection(handmade, "train")


def test_issue9_6_dropped_boxes_are_counted_and_reported_once(handmade: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _ann_file(handmade, "val")
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 6, "image_id": 7, "category_id": 2, "bbox": [100, 100, 5, 5], "iscrowd": 0})
    path.write_text(json.dumps(data))
    with caplog.at_level("INFO", logger="dfd.data"):
        ds = CocoDetection(handmade, "val")
        for i in range(len(ds)):
            ds[i]
    assert ds.dropped_boxes == 2  # id 3 (width 0) and id 6 (outside its 40x30 image)
    (record,) = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert record.levelname == "WARNING" and "instances_val2017.json: 2 of 6 boxes are dropped" in record.getMessage()
    assert "annotation id 3" in record.getMessage() and "a.jpg" in record.getMessage()
    assert CocoDetection(handmade, "train").dropped_boxes == 1


def test_issue9_6_verify_images_decodes_every_image_before_training(handmade: Path) -> None:
    jpeg = handmade / "train2017" / "c.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated: the header opens, the pixels do not decode
    assert len(CocoDetection(handmade, "train")) == 3  # not verified: found only when the image is loaded
    with pytest.raises(DataError, match=r"1 of 3 image file\(s\) of .*instances_train2017\.json in .*train2017 do not "
                                        r"decode: c\.jpg"):
        CocoDetection(handmade, "train", verify=True)
    with pytest.raises(DataError, match=r"do not decode: c\.jpg"):
        build_datasets("coco", handmade, min_size=60, max_size=100, verify_images=True)
    assert len(CocoDetection(handmade, "val", verify=True)) == 3


def test_pipeline_options_name_the_unknown_key_and_fill_nested_defaults() -> None:
    from dfd.data.keypoints import KeypointsDataOptions, SyntheticKeypointsOptions
    from dfd.data.options import parse_options

    opts = parse_options({"sigma": 3.0, "synthetic": None}, KeypointsDataOptions, "data.keypoints")
    assert opts.sigma == 3.0 and opts.synthetic == SyntheticKeypointsOptions()
    nested = parse_options({"synthetic": {"num_train": 7}}, KeypointsDataOptions, "data.keypoints")
    assert isinstance(nested.synthetic, SyntheticKeypointsOptions) and nested.synthetic.num_train == 7
    with pytest.raises(DataError, match=r"data.keypoints.synthetic: unknown key\(s\) num_trian; allowed: "):
        parse_options({"synthetic": {"num_trian": 7}}, KeypointsDataOptions, "data.keypoints")
    assert parse_options(opts, KeypointsDataOptions, "data.keypoints") is opts
