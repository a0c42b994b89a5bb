"""The SimpleBaseline family (Xiao et al., 2018): top-down pose estimation by heatmaps (Table 7).

A torchvision trunk (ResNet, or MobileNetV2 up to its last 1280-channel 1x1 layer: mmpose's
``MobileNetV2(out_indices=(7,))``), then mmpose's ``TopdownHeatmapSimpleHead``: deconvolutions
(kernel 4, stride 2, padding 1, no bias) each followed by BatchNorm and ReLU, and a 1x1 convolution
to one heatmap per joint. A 256x192 person crop gives C5 at 8x6 and heatmaps at 64x48.

Distillable maps: ``backbone`` (C5: 2048 channels for ResNet-50, 1280 for MobileNetV2, stride 32),
``deconv`` (the last deconvolution's output, stride 4) and ``heatmaps`` (the joint logits, stride 4).
``distill.levels`` defaults to ``backbone``: no public config distils this family; at smoke scale DFD on
``backbone`` raised the student's AP and DFD on ``deconv`` (its summed error at stride 4, with the
detection weights α, β) outweighed the heatmap loss five to one and stopped it learning.

Inference (``predict``) is mmpose's ``TopDown.forward_test`` with ``test_cfg`` = ``flip_test``,
``shift_heatmap`` and ``post_process='default'`` (the configs ``res50_coco_256x192.py`` and
``mobilenetv2_coco_256x192.py``; their ``modulate_kernel=11`` is read only by the 'unbiased' decoder,
which they do not use). Keypoints come out in the pixels of the crop the model saw; the evaluator maps
them back to the image with the crop's affine transform (``dfd/engine/evaluators.py``).

mmpose 0.29's zoo checkpoints convert with :func:`simplebaseline_from_mmpose` (``scripts/convert_mmdet.py``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import List, Optional

import torch
import torchvision
from torch import Tensor, nn

from .backbones import resolve_torchvision_weights
from .errors import WeightsError
from .family import (
    Batch,
    Family,
    InputSpec,
    ModelOptions,
    OptionError,
    StepOutput,
    TaskModel,
    arch,
    check_choice,
    check_positive,
    register_family,
    select_maps,
)
from .mmdet import Rule, rename

# backbone name -> (torchvision builder, C5 width)
TRUNKS = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
    "resnet101": (torchvision.models.resnet101, 2048),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 1280),
}
POST_PROCESS = ("default", "none")
LEVELS = ("backbone", "deconv", "heatmaps")
# COCO's left/right joint pairs (0-based): eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


@dataclass
class SimpleBaselineOptions(ModelOptions):
    """SimpleBaseline options; the defaults are mmpose 0.29's ``res50_coco_256x192.py`` (PROTOCOLS.md §7).

    backbone: the torchvision trunk (``mobilenet_v2``: its ``features``, 1280 channels out).
    backbone_weights: torchvision weights name (mmpose: ``torchvision://resnet50`` for the teacher and
        ``mmcls://mobilenet_v2`` for the student; ours is torchvision's MobileNet_V2 ImageNet weights).
    deconv_channels: the widths of the deconvolutions (mmpose: three of 256); kernel 4.
    num_joints: heatmaps out (COCO: 17).
    loss_weight: JointsMSELoss's ``loss_weight`` (1).
    flip_test, shift_heatmap, post_process: mmpose's ``test_cfg`` (True, True, 'default').
    Every BatchNorm trains (mmpose's ResNet and MobileNetV2 default ``norm_eval=False``).
    """

    family: str = "simplebaseline"
    backbone: str = arch("resnet50")
    backbone_weights: Optional[str] = None
    deconv_channels: List[int] = arch(factory=lambda: [256, 256, 256])
    num_joints: int = arch(17)
    loss_weight: float = 1.0
    flip_test: bool = True
    shift_heatmap: bool = True
    post_process: str = "default"

    def check(self) -> None:
        super().check()
        check_choice("backbone", self.backbone, list(TRUNKS))
        check_choice("post_process", self.post_process, POST_PROCESS)
        check_positive("num_joints", self.num_joints)
        check_positive("loss_weight", self.loss_weight)
        if not self.deconv_channels or any(c <= 0 for c in self.deconv_channels):
            raise OptionError("deconv_channels", list(self.deconv_channels), "expected one or more positive widths")


def build_trunk(name: str, weights: str | None) -> nn.Module:
    """The trunk up to C5 (stride 32): a ResNet without pooling and classifier, or MobileNetV2's ``features``."""
    builder, _ = TRUNKS[name]
    w = resolve_torchvision_weights(weights, builder, key="backbone_weights") if weights else None
    try:
        net = builder(weights=w)
    except TypeError as err:
        raise WeightsError(f"backbone_weights={weights!r} are not weights of {name}: {err}") from err
    if name == "mobilenet_v2":
        return net.features
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def deconv_head(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """mmpose's deconvolution layers, initialised as its ``init_weights``: N(0, 0.001) weights, BN 1/0."""
    layers: list[nn.Module] = []
    for width in widths:
        deconv = nn.ConvTranspose2d(in_channels, width, 4, stride=2, padding=1, output_padding=0, bias=False)
        nn.init.normal_(deconv.weight, std=0.001)
        layers += [deconv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


def joints_mse_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """mmpose's ``JointsMSELoss(use_target_weight=True)`` before its ``loss_weight``:

    L = 1/K · Σ_k 1/(N·H·W) · Σ_{n,p} w_{n,k} · (ŷ_{n,k,p} − y_{n,k,p})²

    pred, target: [N, K, H, W]; weight: [N, K] (1 for a labelled joint inside the heatmap, else 0).
    """
    err = (pred.float() - target.float()).pow(2) * weight.float()[:, :, None, None]
    return err.mean()


def max_locations(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """mmpose's ``_get_max_preds``: (x, y) of each map's argmax [N, K, 2] (−1 where the max ≤ 0) and the max [N, K]."""
    n, k, _, w = heatmaps.shape
    values, index = heatmaps.reshape(n, k, -1).max(dim=2)
    xy = torch.stack([index % w, index // w], dim=2).float()
    return torch.where((values > 0)[..., None], xy, torch.full_like(xy, -1.0)), values


def quarter_offset(heatmaps: Tensor, xy: Tensor) -> Tensor:
    """mmpose's 'default' post-process: move each argmax a quarter pixel towards its higher neighbour.

    x += 0.25 · sign(H[y, x+1] − H[y, x−1]),  y += 0.25 · sign(H[y+1, x] − H[y−1, x]),
    only where 1 < x < W − 1 and 1 < y < H − 1 (mmpose's bounds, as written).
    """
    n, k, h, w = heatmaps.shape
    px, py = xy[..., 0].long(), xy[..., 1].long()
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    px_c, py_c = px.clamp(1, w - 2), py.clamp(1, h - 2)
    flat = heatmaps.reshape(n, k, -1)

    def at(y: Tensor, x: Tensor) -> Tensor:
        return flat.gather(2, (y * w + x)[..., None])[..., 0]

    dx = at(py_c, px_c + 1) - at(py_c, px_c - 1)
    dy = at(py_c + 1, px_c) - at(py_c - 1, px_c)
    shift = torch.stack([torch.sign(dx), torch.sign(dy)], dim=2) * 0.25
    return xy + shift * inside[..., None]


def flip_back(heatmaps: Tensor, flip_pairs: Sequence[Sequence[int]], shift: bool) -> Tensor:
    """Heatmaps of a mirrored input back in the input's frame: swap each left/right pair, mirror the
    width, and with ``shift`` move them one column right (mmpose's ``shift_heatmap``:
    out[..., 1:] = out[..., :-1], the first column kept)."""
    order = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    out = heatmaps[:, order].flip(3)
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=3)
    return out


class SimpleBaselineModel(TaskModel, nn.Module):
    """Trunk → deconvolutions → 1x1 joint heatmaps, spoken to through :class:`TaskModel`.

    Training targets (from the ``topdown`` data pipeline): ``heatmaps`` [K, h, w] and
    ``target_weight`` [K] per crop. Predictions per crop: ``keypoints`` [1, K, 3] (x, y in the crop's
    pixels, the heatmap maximum as score), ``boxes`` [1, 4] (the crop), ``scores`` [1] (the crop's
    ``box_score`` when the data gives it, else 1) and ``labels`` [1] (1: person).
    """

    # Crops come at one size: no padding (a padded right edge would land on the left under flip test).
    input_spec = InputSpec(size_divisible=1)

    def __init__(self, options: SimpleBaselineOptions) -> None:
        super().__init__()
        self.options = options
        self.backbone = build_trunk(options.backbone, options.backbone_weights)
        self.deconv = deconv_head(TRUNKS[options.backbone][1], options.deconv_channels)
        self.final = nn.Conv2d(options.deconv_channels[-1], options.num_joints, 1)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward_maps(self, images: Tensor, names: Sequence[str] = LEVELS) -> dict[str, Tensor]:
        """Every map up to the last one ``names`` asks for."""
        maps = {"backbone": self.backbone(images)}
        if "deconv" in names or "heatmaps" in names:
            maps["deconv"] = self.deconv(maps["backbone"])
        if "heatmaps" in names:
            maps["heatmaps"] = self.final(maps["deconv"])
        return maps

    def train_step(self, batch: Batch) -> StepOutput:
        maps = self.forward_maps(batch.images)
        missing = [k for k in ("heatmaps", "target_weight") if any(k not in t for t in batch.targets)]
        if missing:
            raise KeyError(f"simplebaseline trains on targets {missing} from the topdown data pipeline "
                           "(data=coco_keypoints or data=synthetic_keypoints)")
        target = torch.stack([t["heatmaps"] for t in batch.targets])
        weight = torch.stack([t["target_weight"] for t in batch.targets])
        pred = maps["heatmaps"]
        if target.shape != pred.shape:
            raise ValueError(f"target heatmaps {tuple(target.shape[1:])} vs predicted {tuple(pred.shape[1:])}: "
                             "data.keypoints.heatmap_size must be the input size / 32 x 2^(number of deconv_channels): / 4 for three")
        with torch.autocast(batch.images.device.type, enabled=False):
            loss = self.options.loss_weight * joints_mse_loss(pred, target, weight)
        return StepOutput({"heatmap_mse": loss}, maps)

    def distill_maps(self, batch: Batch, names: Sequence[str]) -> dict[str, Tensor]:
        return select_maps(self.forward_maps(batch.images, names), names)

    def test_heatmaps(self, batch: Batch) -> Tensor:
        """Heatmaps [N, K, h, w] in fp32, averaged with those of the mirrored input under ``flip_test``."""
        heatmaps = self.forward_maps(batch.images)["heatmaps"].float()
        if self.options.flip_test:
            pairs = _flip_pairs(batch, self.options.num_joints)
            flipped = self.forward_maps(batch.images.flip(3))["heatmaps"].float()
            heatmaps = 0.5 * (heatmaps + flip_back(flipped, pairs, self.options.shift_heatmap))
        return heatmaps

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        heatmaps = self.test_heatmaps(batch)
        xy, scores = max_locations(heatmaps)
        if self.options.post_process == "default":
            xy = quarter_offset(heatmaps, xy)
        _, _, h, w = heatmaps.shape
        out = []
        for i, (ih, iw) in enumerate(batch.image_sizes):
            stride = torch.tensor([batch.images.shape[-1] / w, batch.images.shape[-2] / h], device=xy.device)
            kpts = torch.cat([xy[i] * stride, scores[i, :, None]], dim=1)[None]
            box_score = float(batch.meta[i].get("box_score", 1.0)) if batch.meta else 1.0
            out.append({
                "keypoints": kpts,
                "boxes": torch.tensor([[0.0, 0.0, float(iw), float(ih)]], device=xy.device),
                "scores": torch.tensor([box_score], device=xy.device),
                "labels": torch.ones(1, dtype=torch.int64, device=xy.device),
            })
        return out


def _flip_pairs(batch: Batch, num_joints: int) -> Sequence[Sequence[int]]:
    """The data's ``flip_pairs`` (int64 [P, 2] in each crop's meta), or COCO's for 17 joints."""
    if batch.meta and "flip_pairs" in batch.meta[0]:
        return [tuple(int(v) for v in p) for p in torch.as_tensor(batch.meta[0]["flip_pairs"]).tolist()]
    if num_joints == 17:
        return COCO_FLIP_PAIRS
    raise ValueError(f"flip_test with {num_joints} joints needs the data's flip_pairs in each crop's target")


def build_simplebaseline(options: SimpleBaselineOptions, num_classes: int) -> SimpleBaselineModel:
    """SimpleBaseline; ``num_classes`` (the person category) does not change the model."""
    del num_classes
    return SimpleBaselineModel(options)


# ----------------------------------------------------------------------------- mmpose 0.x checkpoints

# mmcls / mmpose MobileNetV2's arch_settings: (expand ratio, blocks) of layer1..layer7 (widths do not change names)
MOBILENET_V2_LAYERS = ((1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1))
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _resnet_rules() -> list[Rule]:
    """mmpose's ResNet names its modules as torchvision's; ours sits in a Sequential (conv1, bn1, relu, maxpool, layer1..4)."""
    rules: list[Rule] = [(r"backbone\.conv1\.weight", "backbone.0.weight"), (rf"backbone\.bn1\.{_BN}", r"backbone.1.\1")]
    rules += [(rf"backbone\.layer{n}\.(.+)", rf"backbone.{n + 3}.\1") for n in range(1, 5)]
    return rules


def _mobilenet_v2_rules() -> list[Rule]:
    """mmcls/mmpose MobileNetV2 (``conv1``, ``layerL.j.conv.k`` ConvModules, ``conv2``) onto torchvision's ``features``.

    torchvision: features.0 the stem, features.1..17 the blocks in order, features.18 the last 1x1; in a
    block every ConvModule k but the last is ``conv.k.{0: conv, 1: bn}``, the last (no activation) is
    ``conv.k`` (conv) and ``conv.(k+1)`` (bn).
    """
    rules: list[Rule] = []

    def module(src: str, conv: str, bn: str) -> None:
        rules.extend([(rf"backbone\.{src}\.conv\.weight", f"backbone.{conv}.weight"),
                      (rf"backbone\.{src}\.bn\.{_BN}", rf"backbone.{bn}.\1")])

    module(r"conv1", "0.0", "0.1")
    index = 1
    for layer, (expand, blocks) in enumerate(MOBILENET_V2_LAYERS, start=1):
        last = 1 if expand == 1 else 2
        for j in range(blocks):
            for k in range(last + 1):
                conv, bn = (f"{k}", f"{k + 1}") if k == last else (f"{k}.0", f"{k}.1")
                module(rf"layer{layer}\.{j}\.conv\.{k}", f"{index}.conv.{conv}", f"{index}.conv.{bn}")
            index += 1
    module(r"conv2", f"{index}.0", f"{index}.1")
    return rules


HEAD_RULES: list[Rule] = [
    (rf"keypoint_head\.deconv_layers\.(\d+)\.{_BN}", r"deconv.\1.\2"),  # ConvTranspose2d 0, 3, 6; BatchNorm 1, 4, 7
    (r"keypoint_head\.final_layer\.(weight|bias)", r"final.\1"),
]


def simplebaseline_from_mmpose(state: Mapping[str, Tensor], options: SimpleBaselineOptions) -> dict[str, Tensor]:
    """An mmpose 0.x ``TopDown`` checkpoint (``backbone.*`` ResNet or MobileNetV2, ``keypoint_head.*``
    ``TopdownHeatmapSimpleHead``) as this model's state dict; a key no rule places raises WeightsError naming it."""
    trunk = _mobilenet_v2_rules() if options.backbone == "mobilenet_v2" else _resnet_rules()
    return rename(state, [*trunk, *HEAD_RULES], source="mmpose")


FAMILY = register_family(Family(
    name="simplebaseline",
    options=SimpleBaselineOptions,
    build=build_simplebaseline,
    task="keypoints",
    levels=LEVELS,
    default_levels=("backbone",),  # chosen by a smoke measurement (module docstring)
    inherit_prefixes=("deconv.", "final."),
    target_keys=("heatmaps", "target_weight"),
    pipeline="topdown",
    from_mmdet=simplebaseline_from_mmpose,
))
