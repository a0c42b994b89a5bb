"""Table 7 segmentation: the Cityscapes loaders (real layout, synthetic twin), PSPNet, its config and mIoU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config, evaluate_on_cpu, train_steps
from PIL import Image

from dfd.data import DATASETS, DataError, DataNeeds, build_datasets
from dfd.data.cityscapes import (
    CLASSES,
    ID_TO_TRAIN_ID,
    CityscapesSegmentation,
    SegmentationDataOptions,
    crop_box,
    photometric_distortion,
    ratio_size,
    read_label,
    scale_saturation,
    segmentation_options,
)
from dfd.data.synthetic_cityscapes import STAMP_NAME, ensure_synthetic_cityscapes
from dfd.distill import cwd_loss
from dfd.engine.config import load_config
from dfd.engine.evaluators import MIoUEvaluator, build_evaluators
from dfd.models import OptionError, WeightsError, get_family
from dfd.models.pspnet import PSPNetOptions, build_pspnet, pad_labels, pspnet_from_mmseg, segmentation_loss

SMALL = dict(channels=16, aux_channels=8)
SYNTH = dict(seed=0, num_train=4, num_val=2, height=64, width=128)
OPTS = SegmentationDataOptions(crop_size=[32, 64], base_size=[128, 64])


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_cityscapes(tmp_path_factory.mktemp("synth") / "city", **SYNTH)


def _write_pair(root: Path, split: str, city: str, index: int, ids: np.ndarray, *, label: bool = True) -> None:
    stem = f"{city}_{index:06d}_000019"
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    rgb = np.stack([ids.astype(np.int64) * 7 % 256] * 3, axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    if label:
        Image.fromarray(ids.astype(np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def _hand_made(root: Path) -> Path:
    """Two train and one val image: a road/car image (with unlabeled 0 and ego vehicle 1) and an all-ignored one."""
    ids = np.full((40, 60), 7, dtype=np.uint8)
    ids[10:20, 10:30] = 26
    ids[:, :3] = 0
    ids[-5:, :] = 1
    _write_pair(root, "train", "aachen", 0, ids)
    _write_pair(root, "train", "aachen", 1, np.where(np.arange(60)[None, :] < 30, 0, 1).repeat(40, 0).astype(np.uint8))
    _write_pair(root, "val", "lindau", 0, ids)
    return root


# ----------------------------------------------------------------------------- labels and data


def test_label_ids_map_to_the_19_train_ids() -> None:
    assert len(CLASSES) == 19
    assert [int(ID_TO_TRAIN_ID[i]) for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)] == [255] * 15
    assert {i: int(ID_TO_TRAIN_ID[i]) for i in (7, 8, 11, 21, 23, 24, 26, 31, 33)} == {
        7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 31: 16, 33: 18}
    assert sorted(int(v) for v in ID_TO_TRAIN_ID[:34] if v != 255) == list(range(19))


def test_synthetic_set_is_the_cityscapes_layout_and_deterministic(synth_root: Path, tmp_path: Path) -> None:
    images = sorted((synth_root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    labels = sorted((synth_root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    assert len(images) == len(labels) == 4 and len(list((synth_root / "gtFine" / "val").glob("*/*.png"))) == 2
    assert images[0].name.replace("_leftImg8bit", "_gtFine_labelIds") in {p.name for p in labels}
    ids = np.asarray(Image.open(labels[0]))
    assert ids.dtype == np.uint8 and ids.shape == (64, 128)
    assert {0, 1, 7, 26} <= set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in labels])))
    again = ensure_synthetic_cityscapes(tmp_path / "other", **SYNTH)
    for a in images + labels:
        assert a.read_bytes() == (again / a.relative_to(synth_root)).read_bytes()
    stamp_time = (synth_root / STAMP_NAME).stat().st_mtime_ns
    ensure_synthetic_cityscapes(synth_root, **SYNTH)  # cached: not regenerated
    assert (synth_root / STAMP_NAME).stat().st_mtime_ns == stamp_time


def test_synthetic_generation_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing to overwrite"):
        ensure_synthetic_cityscapes(tmp_path / "real", **SYNTH)


def test_train_items_are_crops_and_eval_items_keep_the_label_size(synth_root: Path) -> None:
    train = CityscapesSegmentation(synth_root, "train", OPTS, train=True)
    val = CityscapesSegmentation(synth_root, "val", SegmentationDataOptions(base_size=[64, 32]), train=False)
    image, target = train[0, 123]
    assert image.shape == (3, 32, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["sem_seg"].shape == (32, 64) and target["sem_seg"].dtype == torch.int64
    assert set(target["sem_seg"].unique().tolist()) <= set(range(19)) | {255}
    again, target_again = train[0, 123]
    assert torch.equal(image, again) and torch.equal(target["sem_seg"], target_again["sem_seg"])
    assert not torch.equal(image, train[0, 124][0])
    image, target = val[0]
    assert image.shape == (3, 32, 64)  # resized to fit base_size (64, 32)
    assert target["sem_seg"].shape == (64, 128) and target["orig_size"].tolist() == [64, 128]
    assert target["size"].tolist() == [32, 64]


def test_augmented_labels_stay_on_their_pixels(synth_root: Path) -> None:
    """After resize, crop and flip, each class's pixels still have its synthetic colour (road, sky, car): the
    median over its pixels (nearest-resized labels and bilinear images disagree by up to a pixel at edges)."""
    from dfd.data.synthetic_cityscapes import COLORS

    opts = SegmentationDataOptions(crop_size=[32, 64], base_size=[128, 64], photometric=False, cat_max_ratio=1.0)
    train = CityscapesSegmentation(synth_root, "train", opts, train=True)
    for seed in range(6):
        image, target = train[seed % 3, seed]
        for train_id, label_id in ((0, 7), (10, 23), (13, 26)):
            inside = target["sem_seg"] == train_id
            if int(inside.sum()) > 20:
                median = image[:, inside].median(1).values * 255
                assert torch.allclose(median, torch.tensor(COLORS[label_id], dtype=torch.float32), atol=25), (seed, train_id, median)


def test_builders_serve_the_segmentation_pipeline(synth_root: Path) -> None:
    assert DATASETS["synthetic_cityscapes"].twin == "cityscapes" and not DATASETS["synthetic_cityscapes"].needs_root
    needs = DataNeeds(pipeline="segmentation", target_keys=("sem_seg",))
    train, val = build_datasets("cityscapes", synth_root, needs=needs, segmentation={"crop_size": [32, 32]})
    assert (len(train), len(val), train.num_classes) == (4, 2, 19)
    assert train.label_to_category[13] == 26  # car
    with pytest.raises(DataError, match="serves the segmentation pipeline"):
        build_datasets("cityscapes", synth_root)  # a detection family
    with pytest.raises(DataError, match="data.segmentation: unknown key.*crop"):
        segmentation_options({"crop": [1, 1]})
    with pytest.raises(DataError, match=r"data.segmentation.cat_max_ratio=0 is invalid"):
        segmentation_options({"cat_max_ratio": 0})


def test_hand_made_edge_cases(tmp_path: Path) -> None:
    root = _hand_made(tmp_path / "city")
    train = CityscapesSegmentation(root, "train", SegmentationDataOptions(crop_size=[16, 16], base_size=[60, 40]), train=True)
    label = train.load(0)[1]
    assert int(label[0, 0]) == 255 and int(label[-1, 20]) == 255  # unlabeled 0, ego vehicle 1
    assert int(label[15, 20]) == 13 and int(label[30, 40]) == 0  # car, road
    ignored = train.load(1)[1]
    assert bool((ignored == 255).all())
    _, target = train[1, 5]  # only ignored pixels: a crop all the same
    assert target["sem_seg"].shape == (16, 16) and bool((target["sem_seg"] == 255).all())
    (root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="lindau_000000_000019_gtFine_labelIds.png does not exist"):
        CityscapesSegmentation(root, "val", SegmentationDataOptions(), train=False)
    corrupt = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    corrupt.write_bytes(b"not a png")
    CityscapesSegmentation(root, "train", SegmentationDataOptions(), train=True)  # not decoded unless asked
    with pytest.raises(DataError, match="cannot read label file .*aachen_000001_000019_gtFine_labelIds.png"):
        build_datasets("cityscapes", root, needs=DataNeeds(pipeline="segmentation"), verify_images=True)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((4, 4), 40, dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match="bad.png holds label id 40"):
        read_label(bad)
    (tmp_path / "no_labels" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="gtFine/train does not exist"):
        CityscapesSegmentation(tmp_path / "no_labels", "train", SegmentationDataOptions(), train=True)


def test_resize_follows_mmcv_rescale() -> None:
    assert ratio_size(1024, 2048, (2048, 1024), 1.0) == (1024, 2048)
    assert ratio_size(1024, 2048, (2048, 1024), 0.5) == (512, 1024)
    assert ratio_size(1024, 2048, (2048, 1024), 1.75) == (1792, 3584)
    assert ratio_size(128, 256, (256, 128), 2.0) == (256, 512)
    assert ratio_size(100, 100, (2048, 1024), 1.0) == (1024, 1024)  # the short side bounds a square


def test_crop_respects_cat_max_ratio() -> None:
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[:, 32:] = 1  # a 32-wide crop at left offset l holds l/32 of class 1: fine iff 9 <= l <= 23

    def fine_fraction(ratio: float) -> float:
        ok = 0
        for seed in range(200):
            torch.manual_seed(seed)
            _, left, _, _ = crop_box(label, (32, 32), ratio, 11)
            ok += 9 <= left <= 23
        return ok / 200

    assert fine_fraction(0.75) > 0.95 and fine_fraction(1.0) < 0.7
    torch.manual_seed(0)
    assert crop_box(label[:16, :16], (32, 32), 0.75, 11) == (0, 0, 16, 16)  # smaller than the crop: all of it
    torch.manual_seed(0)
    first = crop_box(label, (32, 32), 0.75, 1)  # one draw: kept whatever it holds
    torch.manual_seed(0)
    assert first == (int(torch.randint(0, 33, ())), int(torch.randint(0, 33, ())), 32, 32)


def test_photometric_distortion_stays_in_range_and_saturation_is_hsv() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 8, 8)
    for _ in range(20):
        out = photometric_distortion(image)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(scale_saturation(image, 1.0), image)
    gray = scale_saturation(image, 0.0)
    assert torch.allclose(gray, image.max(0, keepdim=True).values.expand_as(gray))  # S=0: every channel at V
    full = scale_saturation(image, 100.0)
    assert torch.allclose(full.min(0).values, torch.zeros(8, 8), atol=1e-6)  # S clipped at 1: min channel 0


# ----------------------------------------------------------------------------- model


def test_trunks_have_output_stride_8_with_mmseg_dilations() -> None:
    r18 = build_pspnet(PSPNetOptions(backbone="resnet18", **SMALL), 19)
    b = r18.backbone
    assert [b.layer3[i].conv1.dilation for i in (0, 1)] == [(1, 1), (2, 2)]
    assert [b.layer4[i].conv1.dilation for i in (0, 1)] == [(2, 2), (4, 4)]
    assert b.layer4[1].conv2.dilation == (1, 1) and b.layer4[0].downsample[0].stride == (1, 1)
    maps = r18.maps(torch.zeros(2, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "c4": (256, 8, 12), "c5": (512, 8, 12), "ppm": (16, 8, 12), "logits": (19, 8, 12)}
    r50 = build_pspnet(PSPNetOptions(backbone="resnet50", **SMALL), 19)
    assert [r50.backbone.layer3[i].conv2.dilation for i in (0, 1)] == [(1, 1), (2, 2)]
    assert [r50.backbone.layer4[i].conv2.dilation for i in (0, 2)] == [(2, 2), (4, 4)]
    assert r50.maps(torch.zeros(2, 3, 32, 32), ("c5",))["c5"].shape == (2, 2048, 4, 4)
    v1c = build_pspnet(PSPNetOptions(backbone="resnet18", stem="v1c", **SMALL), 19)
    assert [k for k in v1c.state_dict() if k.startswith("backbone.stem.") and k.endswith("weight")][:2] == [
        "backbone.stem.0.weight", "backbone.stem.1.weight"]  # mmseg ResNetV1c's names


def test_heads_are_mmseg_widths_and_names() -> None:
    model = build_pspnet(PSPNetOptions(backbone="resnet18", channels=128, aux_channels=64), 19)
    keys = model.state_dict()
    assert keys["decode_head.psp_modules.3.1.conv.weight"].shape == (128, 512, 1, 1)
    assert keys["decode_head.bottleneck.conv.weight"].shape == (128, 512 + 4 * 128, 3, 3)
    assert keys["decode_head.conv_seg.weight"].shape == (19, 128, 1, 1)
    assert keys["auxiliary_head.convs.0.conv.weight"].shape == (64, 256, 3, 3)
    assert model.decode_head.dropout.p == 0.1 and model.options.aux_weight == 0.4
    assert build_pspnet(PSPNetOptions(backbone="resnet18", aux_weight=0.0, **SMALL), 19).auxiliary_head is None


def test_mmseg_weights_map_by_name() -> None:
    v1c = build_pspnet(PSPNetOptions(backbone="resnet18", stem="v1c", **SMALL), 19)
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in v1c.state_dict().items()}
    v1c.load_state_dict(pspnet_from_mmseg(state, v1c.options))
    assert bool((v1c.decode_head.conv_seg.weight == 0.5).all())
    with pytest.raises(WeightsError, match="build the model with stem=v1c"):
        pspnet_from_mmseg(state, PSPNetOptions(backbone="resnet18"))


def test_loss_averages_and_ignores_255() -> None:
    logits = torch.zeros(1, 3, 2, 2)  # uniform: ℓ = log 3 per labelled pixel
    labels = torch.tensor([[[0, 1], [255, 255]]])
    assert segmentation_loss(logits, labels, "all").item() == pytest.approx(np.log(3) * 2 / 4)
    assert segmentation_loss(logits, labels, "valid").item() == pytest.approx(np.log(3))
    ignored = torch.full((1, 2, 2), 255)
    assert segmentation_loss(logits, ignored, "valid").item() == 0.0 == segmentation_loss(logits, ignored, "all").item()
    padded = pad_labels([{"sem_seg": torch.zeros(2, 3, dtype=torch.int64)}], (4, 4), torch.device("cpu"))
    assert padded.shape == (1, 4, 4) and int(padded[0, 3, 3]) == 255 and int(padded[0, 1, 2]) == 0


def test_family_contract_and_slide_inference() -> None:
    family = get_family("pspnet")
    assert (family.task, family.pipeline, family.default_levels) == ("semantic", "segmentation", ("c5",))
    torch.manual_seed(0)
    model = build_pspnet(PSPNetOptions(backbone="resnet18", **SMALL), 19)
    images = [torch.rand(3, 40, 64), torch.rand(3, 36, 60)]
    targets = [{"sem_seg": torch.randint(0, 19, im.shape[-2:])} for im in images]
    batch = model.prepare(images, targets, "cpu")
    out = model.train_step(batch)
    assert set(out.losses) == {"decode", "aux"} and set(out.maps) == set(family.levels)
    sum(out.losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert list(model.distill_maps(batch, ["logits", "c5"])) == ["logits", "c5"]
        whole = model.predict(batch)
        assert [tuple(p["sem_seg"].shape) for p in whole] == [(19, 40, 64), (19, 36, 60)]
        model.options.test_mode, model.options.slide_crop = "slide", [64, 64]  # one window = the whole image
        one = model.predict(batch)
        assert torch.allclose(one[0]["sem_seg"], model._logits(batch.images[:1, :, :40, :64])[0], atol=1e-5)
        model.options.slide_crop, model.options.slide_stride = [24, 32], [16, 16]
        assert [tuple(p["sem_seg"].shape) for p in model.predict(batch)] == [(19, 40, 64), (19, 36, 60)]


def test_option_checks() -> None:
    with pytest.raises(OptionError, match="backbone='resnet152'"):
        PSPNetOptions(backbone="resnet152").check()
    with pytest.raises(OptionError, match="torchvision has no weights for the v1c deep stem"):
        PSPNetOptions(stem="v1c", backbone_weights="ResNet101_Weights.IMAGENET1K_V1").check()
    with pytest.raises(OptionError, match="test_mode='tiles'"):
        PSPNetOptions(test_mode="tiles").check()


def test_cwd_takes_the_logits_of_teacher_and_student() -> None:
    torch.manual_seed(0)
    teacher = build_pspnet(PSPNetOptions(backbone="resnet34", channels=32, aux_channels=16), 19).eval()
    student = build_pspnet(PSPNetOptions(backbone="resnet18", **SMALL), 19).eval()
    batch = student.prepare([torch.rand(3, 32, 32)] * 2, [{}] * 2, "cpu")
    ls, lt = student.distill_maps(batch, ["logits"])["logits"], teacher.distill_maps(batch, ["logits"])["logits"]
    assert ls.shape == lt.shape == (2, 19, 4, 4)
    assert cwd_loss(ls, lt, tau=4.0).item() > 0 and cwd_loss(lt, lt, tau=4.0).item() == pytest.approx(0, abs=1e-6)


# ----------------------------------------------------------------------------- evaluation and config


def test_miou_is_scored_at_the_label_resolution() -> None:
    ds = SimpleNamespace(num_classes=3, ignore_index=255, class_names=("a", "b", "c"))
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 255, 255], [255, 255, 255, 255]])
    logits = torch.zeros(3, 2, 2)
    logits[0, :, 0], logits[1, :, 1] = 5.0, 5.0  # at half the label's size: left half class 0, right class 1
    ev = MIoUEvaluator(ds)
    ev.update([{"sem_seg": logits}], [{"sem_seg": gt}])
    metrics = ev.compute()
    assert metrics["seg/mIoU"] == pytest.approx(100.0) and metrics["seg/aAcc"] == pytest.approx(100.0)
    assert torch.isnan(ev.per_class_iou[2]) and "class b: IoU 100.00" in ev.summary  # c: absent from both
    assert [e.name for e in build_evaluators("semantic", ds)] == ["miou"]


def test_table7_configs_compose(tmp_path: Path) -> None:
    cfg = load_config(compose_config([
        "scale=full", "train=teacher", "teacher=pspnet_r101", "student=pspnet_r18", "data=cityscapes",
        f"data.root={tmp_path}", "schedule=seg_40k", "distill=none"]))
    assert (cfg.teacher.backbone, cfg.teacher.channels, cfg.teacher.aux_channels) == ("resnet101", 512, 256)
    assert (cfg.student.backbone, cfg.student.channels, cfg.student.aux_channels) == ("resnet18", 128, 64)
    assert cfg.student.backbone_weights == "ResNet18_Weights.IMAGENET1K_V1"
    s = cfg.schedule
    assert (s.optimizer, s.lr, s.base_batch, s.momentum, s.weight_decay) == ("sgd", 0.01, 16, 0.9, 5e-4)
    assert (s.policy, s.power, s.lr * s.min_lr_ratio, s.epochs, s.warmup_iters) == ("poly", 0.9, pytest.approx(1e-4), 216, 0)
    assert 216 * (2975 // 16) == 39960  # the 40k iterations in epochs
    seg = cfg.data.segmentation
    assert (list(seg.crop_size), list(seg.base_size), seg.cat_max_ratio, cfg.data.batch_size) == ([512, 512], [2048, 1024], 0.75, 2)
    smoke = load_config(compose_config(["teacher=pspnet_r101", "student=pspnet_r18", "data=synthetic_cityscapes",
                                        "distill=cwd", "distill.levels=[logits]", "teacher.checkpoint=null"]),
                        require_teacher=False)
    assert (smoke.student.backbone, smoke.teacher.backbone, smoke.distill.levels) == ("resnet18", "resnet34", ["logits"])


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_teacher_then_cwd_and_dfd_students_end_to_end(tmp_path: Path) -> None:
    """scripts/train.py: a smoke teacher, then a CWD (logits, τ 4, weight 3) and a DFD (c5) student; each gives seg/mIoU."""
    common = ["teacher=pspnet_r101", "student=pspnet_r18", "data=synthetic_cityscapes", "schedule=seg_40k",
              "data.segmentation.synthetic.num_train=8", "data.segmentation.synthetic.num_val=2", "trainer.max_iters=4",
              "trainer.progress=false", "trainer.threads=1", f"runs_root={tmp_path}"]
    env = {"OMP_NUM_THREADS": "1", "DFD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}

    def train(name: str, *overrides: str) -> str:
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *common, *overrides, f"hydra.run.dir={tmp_path / name}"]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        return (tmp_path / name / "metrics.json").read_text()

    assert '"seg/mIoU"' in train("teacher", "train=teacher", "distill=none")
    ckpt = f"teacher.checkpoint={tmp_path / 'teacher' / 'checkpoints' / 'last.pth'}"
    assert '"seg/mIoU"' in train("cwd", "distill=cwd", "distill.levels=[logits]", "distill.cwd.tau=4", "distill.cwd.weight=3", ckpt)
    assert '"seg/mIoU"' in train("dfd", "distill=dfd", ckpt)


@pytest.mark.slow
def test_a_small_pspnet_overfits_a_few_images(tmp_path: Path) -> None:
    """The family trains: on a few synthetic street scenes its loss falls and its mIoU on them rises."""
    from dfd.data import collate
    from dfd.models import build_model

    cfg = load_config(compose_config(["scale=smoke", "student=pspnet_r18", "data=synthetic_cityscapes", "distill=none"]))
    _, val = build_datasets("synthetic_cityscapes", tmp_path, needs=DataNeeds("segmentation", ("sem_seg",)),
                            segmentation={"synthetic": {"num_train": 2, "num_val": 4, "height": 48, "width": 96},
                                          "base_size": [96, 48]})
    torch.manual_seed(0)
    model = build_model(cfg.student, val.num_classes, "student")
    batch = model.prepare(*collate([val[i] for i in range(len(val))]), "cpu")  # whole images: the same every step
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def miou() -> float:
        return evaluate_on_cpu(model, val, "semantic")["seg/mIoU"]

    before = miou()
    losses = train_steps(model, batch, opt, 60)
    after = miou()
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses
    assert after > before + 20.0, (before, after)
