"""Tests for dfd.data: synthetic COCO generation, the COCO loader, transforms and loaders."""
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

from dfd.data import (
    CocoDetection,
    DataError,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_detection_datasets,
    build_loader,
    build_transforms,
    collate,
    ensure_synthetic_coco,
    generate_synthetic_coco,
    resize_scale,
)
from dfd.data import synthetic as synthetic_module

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
    assert target["boxes"].dtype == torch.float32
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
    assert image.dtype == torch.float32 and image.shape == (3, 60, 80)
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
    for i in range(len(kept)):
        image, target = kept[i]
        assert image.mode == "RGB" and len(target["labels"]) > 0
        assert target["labels"].min() >= 1 and target["labels"].max() <= 4
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "expected"),
    [
        ((30, 40), 60, 100, (60, 80)),
        ((480, 640), 800, 1333, (800, 1066)),
        ((100, 400), 800, 1333, (333, 1333)),  # the long side binds: scale = 1333 / 400
    ],
)
def test_resize_rule(hw: tuple[int, int], min_size: int, max_size: int, expected: tuple[int, int]) -> None:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    h, w = hw
    assert resize_scale(h, w, min_size, max_size) == min(min_size / min(hw), max_size / max(hw))
    image = torch.rand(3, h, w)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, w, h]])
    out, target = Resize(min_size, max_size)(image, {"boxes": boxes, "size": torch.tensor([h, w])})
    assert tuple(out.shape[-2:]) == expected and target["size"].tolist() == list(expected)
    sx, sy = expected[1] / w, expected[0] / h
    assert torch.allclose(target["boxes"], boxes * torch.tensor([sx, sy, sx, sy]))

    # Exactly what torchvision's detection transform would do.
    ref = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    ref_image, ref_target = ref.resize(image, {"boxes": boxes.clone()})
    assert torch.equal(out, ref_image) and torch.equal(target["boxes"], ref_target["boxes"])


def test_horizontal_flip() -> None:
    image = torch.arange(2 * 3 * 40, dtype=torch.float32).reshape(2, 3, 40)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.0], [30.0, 0.0, 40.0, 3.0]])
    out, target = RandomHorizontalFlip(p=1.0)(image, {"boxes": boxes})
    assert torch.equal(out, image.flip(-1))
    assert target["boxes"].tolist() == [[29.0, 2.0, 39.0, 7.0], [0.0, 0.0, 10.0, 3.0]]
    same, kept = RandomHorizontalFlip(p=0.0)(image, {"boxes": boxes})
    assert same is image and kept["boxes"] is boxes

    pil = Image.new("RGB", (40, 3))
    pil.putpixel((0, 0), (255, 0, 0))
    flipped, _ = RandomHorizontalFlip(p=1.0)(pil, {"boxes": boxes})
    assert flipped.getpixel((39, 0)) == (255, 0, 0)

    flip = RandomHorizontalFlip(p=0.5)
    torch.manual_seed(0)
    first = [flip(image, {"boxes": boxes})[1]["boxes"][0, 0].item() for _ in range(16)]
    torch.manual_seed(0)
    assert [flip(image, {"boxes": boxes})[1]["boxes"][0, 0].item() for _ in range(16)] == first
    assert set(first) == {1.0, 29.0}


def test_to_tensor_and_build_transforms() -> None:
    gray = Image.new("L", (5, 4), 255)
    tensor, _ = ToTensor()(gray, {})
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32 and torch.all(tensor == 1.0)
    names = lambda c: [type(t).__name__ for t in c.transforms]  # noqa: E731
    assert names(build_transforms(True, min_size=8, max_size=16)) == ["ToTensor", "RandomHorizontalFlip", "Resize"]
    assert names(build_transforms(False, min_size=8, max_size=16)) == ["ToTensor", "Resize"]


# --------------------------------------------------------------------------- batching


def test_collate_and_build_loader(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "val", build_transforms(False, min_size=64, max_size=80))
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2

    loader = build_loader(ds, batch_size=4, shuffle=True, seed=0)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 2]
    for images, targets in batches:
        for image, target in zip(images, targets):
            assert image.shape[0] == 3 and min(image.shape[-2:]) <= 64 and max(image.shape[-2:]) <= 80
            assert tuple(image.shape[-2:]) == tuple(target["size"].tolist())
    order = [t["image_id"] for _, ts in batches for t in ts]
    again = [t["image_id"] for _, ts in build_loader(ds, batch_size=4, shuffle=True, seed=0) for t in ts]
    assert order == again and sorted(order) == sorted(ds.ids)
    other = [t["image_id"] for _, ts in build_loader(ds, batch_size=4, shuffle=True, seed=5) for t in ts]
    assert other != order
    fixed = [t["image_id"] for _, ts in build_loader(ds, batch_size=4, shuffle=False) for t in ts]
    assert fixed == ds.ids
    assert [len(b[0]) for b in build_loader(ds, batch_size=4, shuffle=False, drop_last=True)] == [4]


def test_build_loader_distributed(synth_root: Path, tmp_path: Path) -> None:
    import torch.distributed as dist

    ds = CocoDetection(synth_root, "val")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(ds, batch_size=2, shuffle=True, seed=0, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert sum(len(images) for images, _ in loader) == len(ds)
    finally:
        dist.destroy_process_group()


def test_build_detection_datasets(synth_root: Path, handmade: Path) -> None:
    train, val = build_detection_datasets(
        "synthetic", synth_root, min_size=64, max_size=80, synthetic={"seed": 0, **SMALL}
    )
    assert len(train) < SMALL["num_train"] and len(val) == SMALL["num_val"]  # empty train images dropped
    image, target = train[0]
    assert isinstance(image, torch.Tensor) and image.shape[0] == 3 and len(target["boxes"]) > 0

    train, val = build_detection_datasets("coco", handmade, min_size=60, max_size=100, filter_empty_train=False)
    assert len(train) == 3 and val.num_classes == 3

    with pytest.raises(DataError, match=r"data\.kind.*'lvis'.*synthetic, coco"):
        build_detection_datasets("lvis", handmade, min_size=60, max_size=100)
    with pytest.raises(DataError, match=r"data\.root: not set"):
        build_detection_datasets("coco", None, min_size=60, max_size=100)
    with pytest.raises(DataError, match=r"data\.synthetic"):
        build_detection_datasets("synthetic", synth_root, min_size=64, max_size=80, synthetic={"bogus": 1})


def test_data_package_is_self_contained() -> None:
    import dfd.data

    for path in Path(dfd.data.__file__).parent.glob("*.py"):
        text = path.read_text()
        for other in ("dfd.engine", "dfd.models", "dfd.distill"):
            assert other not in text, f"{path.name} imports {other}"
