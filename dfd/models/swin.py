"""The Mask R-CNN Swin family: Mask R-CNN on torchvision's Swin Transformer with an FPN on its four stages.

mmdetection 2.x's ``configs/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py`` (Table 6's 42.7 student) and
``mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco.py`` (its 48.2 teacher; PROTOCOLS.md §5): the trunk is
``torchvision.models.swin_t`` / ``swin_s`` (patch 4, window 7, embed 96, depths [2, 2, 6, 2] /
[2, 2, 18, 2], heads [3, 6, 12, 24], stochastic depth 0.2 as mmdetection's — torchvision's swin_s uses
0.3), each stage's output normalised by its own LayerNorm (mmdetection's ``norm0``…``norm3``), an FPN
on the four outputs (96…768 channels → 256, P6 by max-pooling: maps ``p2``…``p6`` as the ResNet
two-stage families) and the rest of ``mask_rcnn_r50_fpn`` (:mod:`dfd.models.mask_rcnn`).

Its training recipe is the schedule's: AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.05 except
``absolute_pos_embed``, ``relative_position_bias_table`` and the norms (``schedule.no_decay_keys``:
every LayerNorm of the trunk has "norm" in its name here, the patch embedding's included), warm-up
1000 iterations; 1x for the student. The teacher's published model was trained 3x with multi-scale
crops (mmdetection's AutoAugment of resizes and crops); that data pipeline is not built here: the
teacher's checkpoint is the published one (``conf/teacher/mask_rcnn_swin_s.yaml``).

Parameter names: torchvision's Swin (``features.{0..7}``, the patch embedding's modules named
``proj`` / ``norm``), so torchvision's ImageNet weights load (``backbone_weights:
Swin_T_Weights.IMAGENET1K_V1``; mmdetection starts from the official Swin release, torchvision from
its own training of the same architecture). Known differences from mmdetection's Swin: torchvision
does not shift windows along a side no longer than the window (stage 4 below 224 px), mmdetection does.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional

import torchvision
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.ops import FeaturePyramidNetwork

from .backbones import resolve_torchvision_weights
from .errors import WeightsError
from .family import Family, ModelOptions, OptionError, arch, check_choice, check_positive, register_family
from .mask_rcnn import INSTANCE_TARGETS
from .mmdet import rename
from .two_stage import (
    DEFAULT_LEVELS,
    INHERIT_PREFIXES,
    LEVELS,
    MaskFields,
    MaxPoolP6,
    RCNNFields,
    StandardRoIHeads,
    TwoStageDetector,
    assemble,
    background_first,
    neck_rules,
    roi_rules,
)


@dataclass(frozen=True)
class SwinSpec:
    builder: object
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]


SWINS = {
    "swin_t": SwinSpec(torchvision.models.swin_t, 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinSpec(torchvision.models.swin_s, 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": SwinSpec(torchvision.models.swin_b, 128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


@dataclass
class SwinFields:
    """The Swin trunk and its FPN. ``backbone`` names torchvision's model; ``embed_dim``, ``depths``,
    ``num_heads`` and ``window_size`` override its sizes (smoke scale: tiny widths; then no pretrained
    ``backbone_weights``). ``drop_path_rate``: the stochastic depth of the last block (linear from 0; 0.2 as
    mmdetection's Swin-T and Swin-S). ``trainable_layers`` counts patch embedding + 4 stages from the top:
    5 trains all (mmdetection's ``frozen_stages=-1``)."""

    backbone: str = arch("swin_t")
    backbone_weights: Optional[str] = None  # torchvision weights name, e.g. Swin_T_Weights.IMAGENET1K_V1
    embed_dim: Optional[int] = arch(None)
    depths: Optional[List[int]] = arch(None)
    num_heads: Optional[List[int]] = arch(None)
    window_size: int = arch(7)
    drop_path_rate: float = 0.2
    trainable_layers: int = 5
    fpn_channels: int = arch(256)
    anchor_sizes: List[int] = arch(factory=lambda: [32, 64, 128, 256, 512])

    def sizes(self) -> tuple[int, list[int], list[int]]:
        """(embed_dim, depths, num_heads) with the named model's values where not overridden."""
        spec = SWINS[self.backbone]
        return (self.embed_dim or spec.embed_dim, list(self.depths or spec.depths), list(self.num_heads or spec.num_heads))

    def check_swin(self) -> None:
        check_choice("backbone", self.backbone, list(SWINS))
        embed, depths, heads = self.sizes()
        check_positive("embed_dim", embed)
        check_positive("window_size", self.window_size)
        check_positive("fpn_channels", self.fpn_channels)
        if len(depths) != 4 or min(depths) <= 0:
            raise OptionError("depths", depths, "expected 4 positive block counts, one per stage")
        if len(heads) != 4 or any(h <= 0 or embed * 2**i % h for i, h in enumerate(heads)):
            raise OptionError("num_heads", heads, f"expected 4 head counts dividing the stage widths {[embed * 2**i for i in range(4)]}")
        custom = (self.embed_dim, self.depths, self.num_heads) != (None, None, None) or self.window_size != 7
        if self.backbone_weights and custom:
            raise OptionError("backbone_weights", self.backbone_weights, f"pretrained weights are {self.backbone}'s: unset embed_dim, "
                              "depths, num_heads and window_size, or set backbone_weights=null")
        if not 0 <= self.drop_path_rate < 1:
            raise OptionError("drop_path_rate", self.drop_path_rate, "expected a probability in [0, 1)")
        if not 0 <= self.trainable_layers <= 5:
            raise OptionError("trainable_layers", self.trainable_layers, "expected 0..5 (patch embedding and 4 stages)")


@dataclass
class MaskRCNNSwinOptions(MaskFields, RCNNFields, SwinFields, ModelOptions):
    """Mask R-CNN Swin options: the trunk (:class:`SwinFields`) and Mask R-CNN's heads; defaults mmdetection
    2.x's ``mask_rcnn_swin-t-p4-w7_fpn_1x_coco`` (Swin-T, heads of ``mask_rcnn_r50_fpn``)."""

    family: str = "mask_rcnn_swin"
    box_low_quality_matches: bool = True

    def check(self) -> None:
        super().check()
        self.check_swin()
        self.check_rcnn()
        self.check_mask()


class SwinTrunk(nn.Module):
    """torchvision's Swin ``features`` with a LayerNorm on each stage's output: maps ``p2``…``p5`` (NCHW,
    strides 4…32, widths C, 2C, 4C, 8C). ``features.0`` is the patch embedding (``proj``, ``permute``,
    ``norm``); ``features.{1,3,5,7}`` the stages; ``features.{2,4,6}`` the patch mergings."""

    def __init__(self, swin: SwinTransformer, embed_dim: int) -> None:
        super().__init__()
        proj, permute, norm = swin.features[0]
        swin.features[0] = nn.Sequential(OrderedDict(proj=proj, permute=permute, norm=norm))
        self.features = swin.features
        self.widths = [embed_dim * 2**i for i in range(4)]
        for i, width in enumerate(self.widths):
            self.add_module(f"norm{i}", nn.LayerNorm(width))

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out: OrderedDict[str, Tensor] = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:
                stage = i // 2
                out[f"p{stage + 2}"] = getattr(self, f"norm{stage}")(x).permute(0, 3, 1, 2).contiguous()
        return out

    def freeze(self, trainable_layers: int) -> None:
        """Freeze the patch embedding and then stages (with their merging and output norm) from the bottom,
        keeping the top ``trainable_layers`` of the 5 (mmdetection's ``frozen_stages = 4 − trainable_layers``)."""
        units = [[self.features[0]]] + [[self.features[2 * k - 1], getattr(self, f"norm{k - 1}")] +
                                        ([self.features[2 * k]] if k < 4 else []) for k in range(1, 5)]
        for unit in units[: 5 - trainable_layers]:
            for module in unit:
                module.requires_grad_(False)


class SwinFPN(nn.Module):
    """The Swin trunk (``body``) and an FPN (``fpn``) on its four outputs with P6 by max-pooling."""

    def __init__(self, body: SwinTrunk, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.widths, out_channels, extra_blocks=MaxPoolP6())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))


def build_swin(options: SwinFields) -> SwinTrunk:
    """torchvision's Swin named by ``backbone`` (with its ImageNet weights if ``backbone_weights``), or one of
    the sizes the options give, its classifier dropped."""
    spec = SWINS[options.backbone]
    embed, depths, heads = options.sizes()
    if options.backbone_weights:
        weights = resolve_torchvision_weights(options.backbone_weights, spec.builder, key="backbone_weights")
        try:
            swin = spec.builder(weights=weights, stochastic_depth_prob=options.drop_path_rate)
        except (TypeError, ValueError) as err:
            raise WeightsError(f"backbone_weights={options.backbone_weights!r} are not weights of {options.backbone}: {err}") from err
    else:
        swin = SwinTransformer(patch_size=[4, 4], embed_dim=embed, depths=depths, num_heads=heads,
                               window_size=[options.window_size] * 2, stochastic_depth_prob=options.drop_path_rate)
    trunk = SwinTrunk(swin, embed)
    trunk.freeze(options.trainable_layers)
    return trunk


def build_mask_rcnn_swin(options: MaskRCNNSwinOptions, num_classes: int) -> TwoStageDetector:
    """Mask R-CNN Swin for ``num_classes`` categories (labels 1..K)."""
    body = SwinFPN(build_swin(options), options.fpn_channels)
    heads = StandardRoIHeads(options, options.fpn_channels, num_classes, with_mask=True)
    return assemble(body, heads, options, options.fpn_channels)


# ----------------------------------------------------------------------------- mmdetection checkpoints


def swin_rules() -> list[tuple[str, str]]:
    """mmdetection 2.x's ``SwinTransformer`` (``backbone.patch_embed``, ``backbone.stages.{i}.blocks.{j}``,
    ``backbone.stages.{i}.downsample``, ``backbone.norm{i}``) → :class:`SwinTrunk` under ``backbone.body``."""
    body = "backbone.body"
    rules = [
        (r"backbone\.patch_embed\.projection\.(weight|bias)", rf"{body}.features.0.proj.\1"),
        (r"backbone\.patch_embed\.norm\.(weight|bias)", rf"{body}.features.0.norm.\1"),
        (r"backbone\.norm([0-3])\.(weight|bias)", rf"{body}.norm\1.\2"),
    ]
    for i in range(4):
        blocks, stage = rf"backbone\.stages\.{i}\.blocks\.(\d+)\.", f"{body}.features.{2 * i + 1}"
        rules += [
            (blocks + r"(norm1|norm2)\.(weight|bias)", rf"{stage}.\1.\2.\3"),
            (blocks + r"attn\.w_msa\.(qkv|proj)\.(weight|bias)", rf"{stage}.\1.attn.\2.\3"),
            (blocks + r"attn\.w_msa\.(relative_position_bias_table|relative_position_index)", rf"{stage}.\1.attn.\2"),
            (blocks + r"ffn\.layers\.0\.0\.(weight|bias)", rf"{stage}.\1.mlp.0.\2"),
            (blocks + r"ffn\.layers\.1\.(weight|bias)", rf"{stage}.\1.mlp.3.\2"),
        ]
        if i < 3:
            rules.append((rf"backbone\.stages\.{i}\.downsample\.(norm|reduction)\.(weight|bias)", rf"{body}.features.{2 * i + 2}.\1.\2"))
    return rules


MASK_RCNN_SWIN_RULES = (
    *neck_rules(swin_rules()),
    *roi_rules(r"roi_head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head", "roi_heads.mask_predictor"),
)


def unfold_to_concat(value: Tensor) -> Tensor:
    """A patch merging's 4C inputs from mmdetection's order (``nn.Unfold``: channel-major, then the 2×2
    offsets (0,0), (0,1), (1,0), (1,1)) to torchvision's (offset-major: (0,0), (1,0), (0,1), (1,1), then
    channel): index j·C + c of torchvision's is c·4 + [0, 2, 1, 3][j] of mmdetection's (the inverse of
    mmdetection's ``swin_converter``). Works on the norm's [4C] and the reduction's [2C, 4C] (last dim)."""
    *lead, four_c = value.shape
    return value.reshape(*lead, four_c // 4, 4)[..., [0, 2, 1, 3]].transpose(-1, -2).reshape(*lead, four_c)


def mask_rcnn_swin_from_mmdet(state, options: MaskRCNNSwinOptions) -> dict[str, Tensor]:
    """An mmdetection 2.x Mask R-CNN Swin's weights as this model's: names by :data:`MASK_RCNN_SWIN_RULES`,
    the patch mergings' norm and reduction reordered (:func:`unfold_to_concat`), each attention's
    ``relative_position_index`` [w², w²] flattened as torchvision keeps it, and the heads' background
    moved / added as :func:`dfd.models.mask_rcnn.mask_rcnn_from_mmdet` does."""
    out = rename(state, MASK_RCNN_SWIN_RULES)
    for name in list(out):
        if name.endswith("attn.relative_position_index"):
            out[name] = out[name].flatten()
        elif any(name.endswith(f"features.{k}.{p}") for k in (2, 4, 6) for p in ("norm.weight", "norm.bias", "reduction.weight")):
            out[name] = unfold_to_concat(out[name])
    background_first(out, "roi_heads.box_predictor", "roi_heads.mask_predictor", agnostic=False)
    return out


FAMILY = register_family(Family(
    name="mask_rcnn_swin",
    options=MaskRCNNSwinOptions,
    build=build_mask_rcnn_swin,
    task="instance",
    levels=LEVELS,
    default_levels=DEFAULT_LEVELS,
    inherit_prefixes=INHERIT_PREFIXES,
    target_keys=INSTANCE_TARGETS,
    from_mmdet=mask_rcnn_swin_from_mmdet,
))

__all__ = ["SWINS", "MaskRCNNSwinOptions", "SwinFPN", "SwinTrunk", "build_mask_rcnn_swin", "mask_rcnn_swin_from_mmdet",
           "unfold_to_concat"]
