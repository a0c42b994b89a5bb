"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet: Table 7's segmentation teacher and student.

The model is mmsegmentation 0.x's ``pspnet_r50-d8`` (``configs/_base_/models/pspnet_r50-d8.py``):

- trunk: ResNet with output stride 8 — layer3 and layer4 keep stride 1 and dilate their 3x3
  convolutions by 2 and 4; the first block of each dilated stage uses half the dilation
  (mmseg's ``contract_dilation=True``; torchvision's ``replace_stride_with_dilation`` does the
  same for Bottleneck trunks). BasicBlock trunks (R18/R34) have no such option in torchvision:
  their ``conv1`` is dilated here as mmseg's BasicBlock does (``conv2`` stays undilated).
- decode head (``PSPHead``): pyramid pooling over bins (1, 2, 3, 6) of c5, each a 1x1 conv-BN-ReLU
  to ``channels``, upsampled bilinearly and concatenated with c5; a 3x3 conv-BN-ReLU bottleneck to
  ``channels`` (the map ``ppm``), Dropout2d(0.1) and a 1x1 classifier (the map ``logits``, 1/8 size).
- auxiliary head (``FCNHead`` on c4): one 3x3 conv-BN-ReLU to ``aux_channels``, Dropout2d(0.1), a
  1x1 classifier; its loss is weighted 0.4.
- loss: cross-entropy over logits upsampled bilinearly (align_corners=False) to the label size,
  ignore index 255.

Difference from mmseg, as an option: mmseg's ``ResNetV1c`` has a deep stem (three 3x3 convs, 32-32-64)
and ImageNet weights of its own (``open-mmlab://resnet101_v1c``). The default here is torchvision's
ResNet (one 7x7 stem conv, torchvision's ImageNet weights); ``stem: v1c`` builds the deep stem
(no torchvision weights exist for it: train from scratch or load mmseg's weights with
:func:`pspnet_from_mmseg`). Module names follow mmseg's (``backbone``, ``decode_head.psp_modules``,
``decode_head.bottleneck``, ``decode_head.conv_seg``, ``auxiliary_head.convs``,
``auxiliary_head.conv_seg``) so an mmseg checkpoint maps by key.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
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

PSPNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_BASIC = ("resnet18", "resnet34")
STEMS = ("pytorch", "v1c")
TEST_MODES = ("whole", "slide")
CE_AVERAGES = ("all", "valid")
PSPNET_LEVELS = ("c4", "c5", "ppm", "logits")
IGNORE_INDEX = 255


@dataclass
class PSPNetOptions(ModelOptions):
    """Options of PSPNet (mmseg's defaults; the R18 student's head widths are set in its config file).

    ``channels`` / ``aux_channels``: widths of the decode head (R50/R101: 512, R18: 128) and of the
    auxiliary FCN head (256; R18: 64). ``aux_weight``: the auxiliary loss weight (0.4; 0 drops the
    head). ``ce_average``: ``all`` divides the summed cross-entropy by every label pixel, ignored
    ones included (mmseg 0.20's ``CrossEntropyLoss``, ``avg_non_ignore=False``: the MGD code base),
    ``valid`` by the non-ignored pixels only (PyTorch's ``ignore_index`` mean). ``test_mode``:
    ``whole`` (one pass over the whole image: MGD's test_cfg) or ``slide`` (windows of
    ``slide_crop`` every ``slide_stride`` pixels, logits averaged where they overlap).
    """

    family: str = "pspnet"
    backbone: str = arch("resnet101")
    backbone_weights: Optional[str] = None  # torchvision weights name, e.g. ResNet101_Weights.IMAGENET1K_V1
    stem: str = arch("pytorch")  # pytorch: torchvision's 7x7 stem | v1c: mmseg ResNetV1c's deep stem
    channels: int = arch(512)
    aux_channels: int = arch(256)
    pool_scales: List[int] = arch(factory=lambda: [1, 2, 3, 6])
    aux_weight: float = 0.4
    dropout: float = 0.1
    ce_average: str = "all"
    test_mode: str = "whole"
    slide_crop: List[int] = field(default_factory=lambda: [512, 512])  # (h, w); test_mode=slide only
    slide_stride: List[int] = field(default_factory=lambda: [341, 341])  # (h, w); 2/3 of the crop, as mmseg's slide configs

    def check(self) -> None:
        super().check()
        check_choice("backbone", self.backbone, PSPNET_BACKBONES)
        check_choice("stem", self.stem, STEMS)
        check_choice("ce_average", self.ce_average, CE_AVERAGES)
        check_choice("test_mode", self.test_mode, TEST_MODES)
        check_positive("channels", self.channels)
        check_positive("aux_channels", self.aux_channels)
        if not self.pool_scales or any(s <= 0 for s in self.pool_scales):
            raise OptionError("pool_scales", list(self.pool_scales), "expected positive bin counts, e.g. [1, 2, 3, 6]")
        if self.aux_weight < 0:
            raise OptionError("aux_weight", self.aux_weight, "expected a non-negative weight")
        if not 0 <= self.dropout < 1:
            raise OptionError("dropout", self.dropout, "expected a probability in [0, 1)")
        for key in ("slide_crop", "slide_stride"):
            value = list(getattr(self, key))
            if len(value) != 2 or any(v <= 0 for v in value):
                raise OptionError(key, value, "expected two positive sizes (h, w)")
        if self.stem == "v1c" and self.backbone_weights:
            raise OptionError("backbone_weights", self.backbone_weights,
                              "torchvision has no weights for the v1c deep stem; set it null (or stem=pytorch)")


# ----------------------------------------------------------------------------- trunk


class ConvModule(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, named as mmcv's ConvModule (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)


def deep_stem() -> nn.Sequential:
    """ResNetV1c's stem: 3x3 convs 3→32 (stride 2), 32→32, 32→64, each with BN and ReLU (mmseg's indices)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64))):
        layers += [nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def dilate_basic_stage(stage: nn.Sequential, dilation: int) -> None:
    """Make a BasicBlock stage stride 1 with dilated ``conv1``s: the first block at ``dilation // 2``
    (mmseg's ``contract_dilation``), the others at ``dilation``; padding = dilation keeps the size."""
    for i, block in enumerate(stage):
        d = dilation // 2 if i == 0 else dilation
        block.conv1.stride, block.conv1.dilation, block.conv1.padding = (1, 1), (d, d), (d, d)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def build_trunk(options: PSPNetOptions) -> nn.Module:
    """A torchvision ResNet with output stride 8 (layer3 dilation 2, layer4 dilation 4), no pooling/fc."""
    builder = getattr(torchvision.models, options.backbone)
    weights = None
    if options.backbone_weights:
        weights = resolve_torchvision_weights(options.backbone_weights, builder, key="backbone_weights")
    kwargs = {} if options.backbone in _BASIC else {"replace_stride_with_dilation": [False, True, True]}
    try:
        trunk = builder(weights=weights, **kwargs)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"backbone_weights={options.backbone_weights!r} are not weights of {options.backbone}: {err}") from err
    if options.backbone in _BASIC:
        dilate_basic_stage(trunk.layer3, 2)
        dilate_basic_stage(trunk.layer4, 4)
    if options.stem == "v1c":
        del trunk.conv1, trunk.bn1, trunk.relu
        trunk.stem = deep_stem()
    del trunk.fc, trunk.avgpool
    return trunk


def trunk_forward(trunk: nn.Module, x: Tensor, deepest: str = "c5") -> dict[str, Tensor]:
    """c4 (layer3, stride 8) and, unless ``deepest="c4"``, c5 (layer4, stride 8)."""
    x = trunk.stem(x) if hasattr(trunk, "stem") else trunk.relu(trunk.bn1(trunk.conv1(x)))
    x = trunk.layer2(trunk.layer1(trunk.maxpool(x)))
    out = {"c4": trunk.layer3(x)}
    if deepest == "c5":
        out["c5"] = trunk.layer4(out["c4"])
    return out


def _width(backbone: str, stage: int) -> int:
    """Channels of c4 (stage 3) / c5 (stage 4)."""
    base = 64 * 2 ** (stage - 1)
    return base if backbone in _BASIC else base * 4


# ----------------------------------------------------------------------------- heads


class PSPHead(nn.Module):
    """Pyramid pooling + bottleneck + classifier.

    For bins s ∈ pool_scales: P_s = up(ReLU(BN(W_s * avgpool_s(c5)))), each to the size of c5;
    ppm = ReLU(BN(W_b *3x3 [c5, P_1, ..., P_k]));  logits = W_cls * dropout(ppm) + b.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, pool_scales: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's decode-head init
        nn.init.zeros_(self.conv_seg.bias)

    def features(self, c5: Tensor) -> Tensor:
        size = c5.shape[-2:]
        pooled = [F.interpolate(m(c5), size=size, mode="bilinear", align_corners=False) for m in self.psp_modules]
        return self.bottleneck(torch.cat([c5, *pooled], dim=1))

    def classify(self, ppm: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(ppm))


class FCNHead(nn.Module):
    """The auxiliary head: aux = W_cls * dropout(ReLU(BN(W *3x3 c4))) + b (mmseg's FCNHead, num_convs=1)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, c4: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(c4)))


def segmentation_loss(logits: Tensor, labels: Tensor, average: str = "all") -> Tensor:
    """Cross-entropy of logits [N, C, h, w] upsampled to labels [N, H, W] (255 = ignored).

    ℓ_p = −log softmax(up(logits))_p[y_p] for y_p ≠ 255, 0 otherwise;
    ``all``:  L = Σ_p ℓ_p / (N·H·W)  (mmseg 0.x: ignored pixels count in the mean);
    ``valid``: L = Σ_p ℓ_p / max(1, #{p : y_p ≠ 255}).
    """
    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = labels.numel() if average == "all" else (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def pad_labels(targets: Sequence[Mapping[str, Tensor]], size: tuple[int, int], device: torch.device) -> Tensor:
    """The per-image label maps ``sem_seg`` [h, w] as one int64 [N, H, W], padded with 255 (mmseg's seg_pad_val)."""
    out = torch.full((len(targets), *size), IGNORE_INDEX, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        if "sem_seg" not in t:
            raise KeyError("pspnet: a training target has no 'sem_seg' label map (use a segmentation data.kind)")
        label = t["sem_seg"]
        label = label[0] if label.dim() == 3 else label
        h, w = label.shape[-2:]
        out[i, :h, :w] = label
    return out


# ----------------------------------------------------------------------------- model


class PSPNetModel(TaskModel, nn.Module):
    """PSPNet speaking :class:`TaskModel`: maps ``c4``, ``c5``, ``ppm``, ``logits`` (all at stride 8)."""

    input_spec = InputSpec(size_divisible=8)

    def __init__(self, options: PSPNetOptions, num_classes: int) -> None:
        super().__init__()
        self.options = options
        self.num_classes = num_classes
        self.backbone = build_trunk(options)
        c4, c5 = _width(options.backbone, 3), _width(options.backbone, 4)
        self.decode_head = PSPHead(c5, options.channels, num_classes, options.pool_scales, options.dropout)
        self.auxiliary_head = FCNHead(c4, options.aux_channels, num_classes, options.dropout) if options.aux_weight > 0 else None

    def maps(self, images: Tensor, names: Sequence[str] = PSPNET_LEVELS) -> dict[str, Tensor]:
        """The maps ``names`` (and those before them), computing no more of the network than they need."""
        deepest = "c4" if set(names) <= {"c4"} else "c5"
        out = trunk_forward(self.backbone, images, deepest)
        if {"ppm", "logits"} & set(names):
            out["ppm"] = self.decode_head.features(out["c5"])
        if "logits" in names:
            out["logits"] = self.decode_head.classify(out["ppm"])
        return out

    def train_step(self, batch: Batch) -> StepOutput:
        maps = self.maps(batch.images)
        labels = pad_labels(batch.targets, tuple(batch.images.shape[-2:]), batch.images.device)
        losses = {"decode": segmentation_loss(maps["logits"], labels, self.options.ce_average)}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head(maps["c4"])
            losses["aux"] = self.options.aux_weight * segmentation_loss(aux, labels, self.options.ce_average)
        return StepOutput(losses, maps)

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.maps(batch.images, names), names)

    def _logits(self, images: Tensor) -> Tensor:
        """Logits [N, C, H, W] at the size of ``images`` (mmseg's ``encode_decode``)."""
        logits = self.maps(images, ("logits",))["logits"]
        return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _slide(self, image: Tensor) -> Tensor:
        """Logits [C, H, W] of one image by windows of ``slide_crop`` every ``slide_stride``, averaged.

        Windows start at multiples of the stride, the last one shifted back to end at the border
        (mmseg's ``slide_inference``); each pixel's logits are the mean over the windows covering it.
        """
        (ch, cw), (sh, sw) = self.options.slide_crop, self.options.slide_stride
        h, w = image.shape[-2:]
        total = image.new_zeros((self.num_classes, h, w), dtype=torch.float32)
        count = image.new_zeros((1, h, w), dtype=torch.float32)
        for y in range(max(h - ch + sh - 1, 0) // sh + 1):
            for x in range(max(w - cw + sw - 1, 0) // sw + 1):
                y1, x1 = max(min(y * sh, h - ch), 0), max(min(x * sw, w - cw), 0)
                y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
                total[:, y1:y2, x1:x2] += self._logits(image[None, :, y1:y2, x1:x2])[0]
                count[:, y1:y2, x1:x2] += 1
        return total / count

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        """Per image ``sem_seg``: float logits [C, h, w] at the input's unpadded size (h, w)."""
        if self.options.test_mode == "slide":
            return [{"sem_seg": self._slide(im[:, :h, :w])} for im, (h, w) in zip(batch.images, batch.image_sizes)]
        logits = self._logits(batch.images)
        return [{"sem_seg": lg[:, :h, :w]} for lg, (h, w) in zip(logits, batch.image_sizes)]


def build_pspnet(options: PSPNetOptions, num_classes: int) -> PSPNetModel:
    """PSPNet for ``num_classes`` classes (label maps hold 0..num_classes-1, 255 ignored)."""
    return PSPNetModel(options, num_classes)


def pspnet_from_mmseg(state: Mapping[str, Tensor], options: PSPNetOptions) -> dict[str, Tensor]:
    """An mmseg 0.x PSPNet ``state_dict`` as this model's: same names, the ``backbone.stem.*`` deep stem
    only with ``stem: v1c`` (a torchvision-stem model cannot take it: WeightsError)."""
    if options.stem != "v1c" and any(k.startswith("backbone.stem.") for k in state):
        raise WeightsError("the mmseg checkpoint has ResNetV1c's deep stem (backbone.stem.*): build the model with stem=v1c")
    return dict(state)


FAMILY = register_family(Family(
    name="pspnet",
    options=PSPNetOptions,
    build=build_pspnet,
    task="semantic",
    levels=PSPNET_LEVELS,
    default_levels=("c5",),  # MGD's segmentation config distils the last backbone stage
    inherit_prefixes=("decode_head.", "auxiliary_head."),
    target_keys=("sem_seg",),
    pipeline="segmentation",
    from_mmdet=pspnet_from_mmseg,
    mmdet_options={"stem": "v1c", "backbone_weights": None},  # mmseg's ResNetV1c; torchvision has no weights for it
))
