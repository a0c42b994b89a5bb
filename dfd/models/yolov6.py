"""The YOLOv6 family (Li et al., 2022), release 0.2.0 of meituan/YOLOv6: EfficientRep + Rep-PAN + decoupled head.

Written from the paper and the public code of tag 0.2.0 (``configs/yolov6{t,s}.py``,
``yolov6/models/{efficientrep,reppan,effidehead,yolo}.py``, ``yolov6/layers/common.py``); Table 6's
numbers (S 44.0 @400e, T 40.6 @300e) match no release exactly, 0.2.0 is the nearest (S 43.8, T 40.3)
(PROTOCOLS.md §6). Module names follow the release's, so its checkpoints convert by
:func:`from_yolov6` with no renaming.

Network, with the release's channel list c = ceil8(w·[64, 128, 256, 512, 1024, 256, 128, 128, 256, 256, 512])
and repeats n = max(round(d·[1, 6, 12, 18, 6, 12, 12, 12, 12]), 1) (n = 1 stays 1), d/w the depth and width
multipliers (T 0.33/0.375, S 0.33/0.50):

- backbone (EfficientRep): stem RepVGG/2 → c0; ERBlock_k (k = 2..5): RepVGG/2 then RepBlock of n_{k-1};
  ERBlock_5 ends with SimSPPF. Outputs C3 (stride 8), C4 (16), C5 (32).
- neck (Rep-PAN): top-down with 1×1 SimConv reductions and 2×2 transposed-conv upsampling, bottom-up with
  3×3/2 SimConvs; outputs ``p3`` (c6 channels), ``p4`` (c8), ``p5`` (c10): the distillable maps.
- detect (efficient decoupled head), per level: 1×1 stem, 3×3 cls conv → 1×1 class logits, 3×3 reg conv →
  1×1 ltrb distances in stride units (``use_dfl`` false, ``reg_max`` 0 in 0.2.0 T/S).

Training: anchor-free points at cell centres, ATSS (``atss_epochs`` epochs) then TAL, VariFocal class loss and
GIoU/SIoU box loss (:mod:`dfd.models.yolov6_loss`). Evaluation: every (point, class) scoring above
``conf_thresh``, per-class NMS at ``iou_thresh``, the ``max_det`` best (``tools/eval.py``: multi_label=True).
The RepVGG blocks re-parameterise into single 3×3 convolutions (:func:`reparameterize`) with equal outputs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

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
from .yolov6_loss import IOU_TYPES, YoloLoss

YOLOV6_LEVELS = ("p3", "p4", "p5")
STRIDES = (8, 16, 32)
BACKBONE_CHANNELS = (64, 128, 256, 512, 1024)
NECK_CHANNELS = (256, 128, 128, 256, 256, 512)
BACKBONE_REPEATS = (1, 6, 12, 18, 6)
NECK_REPEATS = (12, 12, 12, 12)
VARIANTS = {"t": (0.33, 0.375, "siou"), "s": (0.33, 0.50, "giou")}  # configs/yolov6{t,s}.py of 0.2.0
BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # yolov6/utils/torch_utils.py initialize_weights
LETTERBOX_GRAY = 114 / 255


@dataclass
class YoloV6Options(ModelOptions):
    """YOLOv6 options; the defaults are release 0.2.0's ``configs/yolov6s.py`` (``variant=s``).

    variant: ``t`` or ``s``: names the release's config; ``depth``/``width`` are the multipliers it sets
        (T 0.33/0.375, S 0.33/0.50) and ``iou_type`` its box loss (T ``siou``, S ``giou``); the option files
        (conf/teacher/yolov6_s.yaml, conf/student/yolov6_t.yaml) set all three; the smoke scale shrinks ``width``.
    atss_epochs: epochs assigned by ATSS (top 9 per level) before TAL takes over (``warmup_epoch`` 4).
    tal_topk, tal_alpha, tal_beta: TAL's top-k and the exponents of t = s^α·u^β (13, 1, 6).
    vfl_alpha, vfl_gamma: VariFocal loss (0.75, 2). cls_weight, iou_weight: loss weights (1.0, 2.5).
    grid_cell_size, grid_cell_offset: ATSS's anchor box side in strides (5) and the points' offset (0.5).
    prior_prob: the class logits' initial probability (0.01). bn_momentum: every BatchNorm's running-statistics
        momentum (``initialize_weights``: 0.03, with eps 1e-3); runs of a few dozen iterations need more (0.1).
    loss_times_world: multiply the task losses by the number of processes under torchrun, as the release does
        (``engine.train_in_steps``: ``total_loss *= world_size``), so DDP's gradient average becomes a sum over
        processes, each normalised by its own target-score sum. No effect in a single process.
    conf_thresh, iou_thresh, max_det: evaluation (``tools/eval.py``: 0.03, 0.65; NMS keeps 300).
    max_nms: candidates kept (by score) before NMS (``non_max_suppression``'s 30000).
    """

    family: str = "yolov6"
    variant: str = arch("s")
    depth: float = arch(0.33)
    width: float = arch(0.50)
    iou_type: str = "giou"
    atss_epochs: int = 4
    atss_topk: int = 9
    tal_topk: int = 13
    tal_alpha: float = 1.0
    tal_beta: float = 6.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    cls_weight: float = 1.0
    iou_weight: float = 2.5
    grid_cell_size: float = 5.0
    grid_cell_offset: float = 0.5
    prior_prob: float = 0.01
    bn_momentum: float = BN_MOMENTUM
    loss_times_world: bool = True
    conf_thresh: float = 0.03
    iou_thresh: float = 0.65
    max_det: int = 300
    max_nms: int = 30000

    def check(self) -> None:
        super().check()
        check_choice("variant", self.variant, tuple(VARIANTS))
        check_choice("iou_type", self.iou_type, IOU_TYPES)
        for key in ("depth", "width", "atss_topk", "tal_topk", "grid_cell_size", "max_det", "max_nms"):
            check_positive(key, getattr(self, key))
        if self.atss_epochs < 0:
            raise OptionError("atss_epochs", self.atss_epochs, "expected a number of epochs >= 0")
        for key in ("conf_thresh", "iou_thresh", "prior_prob", "vfl_alpha", "bn_momentum"):
            if not 0 <= getattr(self, key) <= 1:
                raise OptionError(key, getattr(self, key), "expected a number in [0, 1]")


def channels_and_repeats(depth: float, width: float) -> tuple[list[int], list[int]]:
    """The release's ``build_network``: c_i = 8·ceil(w·C_i / 8); n_i = max(round(d·N_i), 1) for N_i > 1, else N_i."""
    channels = [math.ceil(c * width / 8) * 8 for c in BACKBONE_CHANNELS + NECK_CHANNELS]
    repeats = [max(round(n * depth), 1) if n > 1 else n for n in BACKBONE_REPEATS + NECK_REPEATS]
    return channels, repeats


# ----------------------------------------------------------------------------- layers


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBN(nn.Sequential):
    """conv (no bias) → BN: one branch of a RepVGG block (names ``conv``, ``bn`` as the release's ``conv_bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = _bn(cout)


class ConvAct(nn.Module):
    """conv (no bias) → BN → activation: ``SimConv`` (ReLU) and the head's ``Conv`` (SiLU)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = _bn(cout)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def fuse_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """A conv kernel K followed by eval-mode BN as one conv: K' = K·γ/σ, b' = β − μ·γ/σ, σ = sqrt(var + eps)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """RepVGG block: y = ReLU(BN(conv3×3 x) + BN(conv1×1 x) + BN(x)), the identity branch only when the shape allows.

    :meth:`reparameterize` folds the three branches into one 3×3 conv with bias (``rbr_reparam``):
    K = fuse(K3) + pad₁(fuse(K1)) + fuse(I), b = the three fused biases summed, I the 3×3 identity kernel
    (1 at the centre of channel i → i). The result equals the training-time block in eval mode.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = cin, cout, stride
        self.nonlinearity = nn.ReLU()
        self.rbr_identity = _bn(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = ConvBN(cin, cout, 3, stride)
        self.rbr_1x1 = ConvBN(cin, cout, 1, stride)
        self.rbr_reparam: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.rbr_reparam(x))
        identity = self.rbr_identity(x) if self.rbr_identity is not None else 0
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        k3, b3 = fuse_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = fuse_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(k3)
            eye[torch.arange(self.in_channels), torch.arange(self.in_channels), 1, 1] = 1.0
            ki, bi = fuse_bn(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the three branches by the single equivalent 3×3 conv (irreversible; for evaluation/export)."""
        if self.rbr_reparam is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True).to(kernel)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.rbr_reparam = conv
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_identity = None


class RepBlock(nn.Sequential):
    """n RepVGG blocks: ``conv1`` (cin → cout) then ``block`` (n − 1 of cout → cout)."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.conv1 = RepVGGBlock(cin, cout)
        if n > 1:
            self.block = nn.Sequential(*(RepVGGBlock(cout, cout) for _ in range(n - 1)))


class SimSPPF(nn.Module):
    """SPPF with ReLU: y = cv2([x', m(x'), m²(x'), m³(x')]), x' = cv1(x), m a 5×5/1 max pool."""

    def __init__(self, cin: int, cout: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = ConvAct(cin, hidden, 1)
        self.cv2 = ConvAct(hidden * 4, cout, 1)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class Transpose(nn.Module):
    """2× upsampling by a 2×2/2 transposed convolution with bias (``upsample_transpose``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample_transpose = nn.ConvTranspose2d(channels, channels, 2, 2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample_transpose(x)


# ----------------------------------------------------------------------------- network


class EfficientRep(nn.Module):
    """EfficientRep backbone; returns (C3, C4, C5) at strides 8, 16, 32 with c2, c3, c4 channels."""

    def __init__(self, c: Sequence[int], n: Sequence[int]) -> None:
        super().__init__()
        self.stem = RepVGGBlock(3, c[0], 2)
        self.ERBlock_2 = nn.Sequential(RepVGGBlock(c[0], c[1], 2), RepBlock(c[1], c[1], n[1]))
        self.ERBlock_3 = nn.Sequential(RepVGGBlock(c[1], c[2], 2), RepBlock(c[2], c[2], n[2]))
        self.ERBlock_4 = nn.Sequential(RepVGGBlock(c[2], c[3], 2), RepBlock(c[3], c[3], n[3]))
        self.ERBlock_5 = nn.Sequential(RepVGGBlock(c[3], c[4], 2), RepBlock(c[4], c[4], n[4]), SimSPPF(c[4], c[4]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.ERBlock_3(self.ERBlock_2(self.stem(x)))
        c4 = self.ERBlock_4(c3)
        return c3, c4, self.ERBlock_5(c4)


class RepPANNeck(nn.Module):
    """Rep-PAN neck.

    Top-down: f0 = reduce0(C5); P4' = Rep_p4([up0(f0), C4]); f1 = reduce1(P4'); P3 = Rep_p3([up1(f1), C3]).
    Bottom-up: P4 = Rep_n3([down2(P3), f1]); P5 = Rep_n4([down1(P4), f0]).
    """

    def __init__(self, c: Sequence[int], n: Sequence[int]) -> None:
        super().__init__()
        self.reduce_layer0 = ConvAct(c[4], c[5], 1)
        self.upsample0 = Transpose(c[5])
        self.Rep_p4 = RepBlock(c[3] + c[5], c[5], n[5])
        self.reduce_layer1 = ConvAct(c[5], c[6], 1)
        self.upsample1 = Transpose(c[6])
        self.Rep_p3 = RepBlock(c[2] + c[6], c[6], n[6])
        self.downsample2 = ConvAct(c[6], c[7], 3, 2)
        self.Rep_n3 = RepBlock(c[6] + c[7], c[8], n[7])
        self.downsample1 = ConvAct(c[8], c[9], 3, 2)
        self.Rep_n4 = RepBlock(c[5] + c[9], c[10], n[8])

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        c3, c4, c5 = feats
        f0 = self.reduce_layer0(c5)
        f1 = self.reduce_layer1(self.Rep_p4(torch.cat([self.upsample0(f0), c4], 1)))
        p3 = self.Rep_p3(torch.cat([self.upsample1(f1), c3], 1))
        p4 = self.Rep_n3(torch.cat([self.downsample2(p3), f1], 1))
        p5 = self.Rep_n4(torch.cat([self.downsample1(p4), f0], 1))
        return {"p3": p3, "p4": p4, "p5": p5}


class EffiDeHead(nn.Module):
    """The efficient decoupled head: per level a 1×1 SiLU stem, then a class branch (3×3 SiLU conv, 1×1 to K
    logits) and a box branch (3×3 SiLU conv, 1×1 to 4 distances). Initialised as the release: class logits
    weight 0, bias −log((1 − π)/π) (π = ``prior_prob``); distances weight 0, bias 1 (one stride each side)."""

    def __init__(self, channels: Sequence[int], num_classes: int, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvAct(ch, ch, 1, act=nn.SiLU) for ch in channels)
        self.cls_convs = nn.ModuleList(ConvAct(ch, ch, 3, act=nn.SiLU) for ch in channels)
        self.reg_convs = nn.ModuleList(ConvAct(ch, ch, 3, act=nn.SiLU) for ch in channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(ch, num_classes, 1) for ch in channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(ch, 4, 1) for ch in channels)
        with torch.no_grad():
            for conv in self.cls_preds:
                conv.weight.zero_()
                conv.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
            for conv in self.reg_preds:
                conv.weight.zero_()
                conv.bias.fill_(1.0)

    def forward(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits [N, A, K] and ltrb distances in strides [N, A, 4], levels concatenated (fp32)."""
        logits, dists = [], []
        for i, x in enumerate(maps):
            x = self.stems[i](x)
            logits.append(self.cls_preds[i](self.cls_convs[i](x)).flatten(2).transpose(1, 2))
            dists.append(self.reg_preds[i](self.reg_convs[i](x)).flatten(2).transpose(1, 2))
        return torch.cat(logits, 1).float(), torch.cat(dists, 1).float()


class GridAnchors(nn.Module):
    """The anchor points of every level (cell centres, (j + offset)·s, (i + offset)·s) and ATSS's anchor boxes
    (the points ± size·s/2), level by level, row-major, always fp32.

    ``forward(image_list, feature_maps)`` returns one [A, 4] tensor of anchor boxes per image (torchvision's
    AnchorGenerator interface); :meth:`grid` the points [A, 2], the boxes [A, 4], the strides [A, 1] and the
    number of anchors per level.
    """

    def __init__(self, strides: Sequence[int] = STRIDES, size: float = 5.0, offset: float = 0.5) -> None:
        super().__init__()
        self.strides, self.size, self.offset = tuple(strides), float(size), float(offset)

    def grid(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        points, boxes, strides, counts = [], [], [], []
        for stride, m in zip(self.strides, maps):
            h, w = m.shape[-2:]
            ys = (torch.arange(h, device=m.device, dtype=torch.float32) + self.offset) * stride
            xs = (torch.arange(w, device=m.device, dtype=torch.float32) + self.offset) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            p = torch.stack([xx, yy], -1).reshape(-1, 2)
            half = self.size * stride / 2
            points.append(p)
            boxes.append(torch.cat([p - half, p + half], 1))
            strides.append(torch.full((h * w, 1), float(stride), device=m.device))
            counts.append(h * w)
        return torch.cat(points), torch.cat(boxes), torch.cat(strides), counts

    def forward(self, image_list, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        boxes = self.grid(feature_maps)[1]
        return [boxes for _ in range(image_list.tensors.shape[0])]


def distance_to_box(points: Tensor, dist: Tensor) -> Tensor:
    """(x1, y1, x2, y2) = (px − l, py − t, px + r, py + b)."""
    lt, rb = dist.split(2, -1)
    return torch.cat([points - lt, points + rb], -1)


# ----------------------------------------------------------------------------- model


class YoloV6Model(TaskModel, nn.Module):
    """YOLOv6 spoken to through :class:`TaskModel`. Inputs are RGB in [0, 1], not normalised, padded with the
    letterbox gray 114/255 (the release divides uint8 images by 255; ``letterbox`` pads with 114).

    Head column c is dataset label c + 1. ``set_epoch(epoch, epochs)`` (called by the training loop at the start
    of each epoch) picks the assigner: ATSS while ``epoch < atss_epochs``, TAL after.
    """

    input_spec = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size_divisible=32, pad_value=LETTERBOX_GRAY)

    def __init__(self, options: YoloV6Options, num_classes: int) -> None:
        super().__init__()
        c, n = channels_and_repeats(options.depth, options.width)
        self.options, self.num_classes, self.epoch = options, num_classes, 0
        self.backbone = EfficientRep(c, n)
        self.neck = RepPANNeck(c, n)
        self.detect = EffiDeHead((c[6], c[8], c[10]), num_classes, options.prior_prob)
        self.anchor_generator = GridAnchors(STRIDES, options.grid_cell_size, options.grid_cell_offset)
        self.loss = YoloLoss(num_classes, options)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = options.bn_momentum

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        self.epoch = int(epoch)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        return self.neck(self.backbone(images))

    def train_step(self, batch: Batch) -> StepOutput:
        maps = self.features(batch.images)
        logits, dists = self.detect(list(maps.values()))
        points, boxes, strides, counts = self.anchor_generator.grid(list(maps.values()))
        with torch.autocast(batch.images.device.type, enabled=False):
            losses = self.loss(logits, dists, points, boxes, strides, counts, batch.targets, self.epoch)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if self.options.loss_times_world and world > 1:
            losses = {k: v * world for k, v in losses.items()}
        return StepOutput(losses, maps)

    def distill_maps(self, batch: Batch, names) -> dict[str, Tensor]:
        return select_maps(self.features(batch.images), names)

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        maps = list(self.features(batch.images).values())
        logits, dists = self.detect(maps)
        points, _, strides, _ = self.anchor_generator.grid(maps)
        with torch.autocast(batch.images.device.type, enabled=False):
            boxes = distance_to_box(points / strides, dists) * strides
            scores = logits.sigmoid()
            return [self._postprocess(b, s, size) for b, s, size in zip(boxes, scores, batch.image_sizes)]

    def _postprocess(self, boxes: Tensor, scores: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Every (point, class) with score > conf_thresh, the max_nms best, per-class NMS, the max_det best; boxes
        clipped to the unpadded image."""
        o = self.options
        idx, cls = (scores > o.conf_thresh).nonzero(as_tuple=True)
        conf = scores[idx, cls]
        if conf.numel() > o.max_nms:
            conf, order = conf.topk(o.max_nms)
            idx, cls = idx[order], cls[order]
        h, w = size
        chosen = boxes[idx].clone()
        chosen[:, 0::2] = chosen[:, 0::2].clamp(0, w)
        chosen[:, 1::2] = chosen[:, 1::2].clamp(0, h)
        keep = batched_nms(chosen, conf, cls, o.iou_thresh)[: o.max_det]
        return {"boxes": chosen[keep], "scores": conf[keep], "labels": cls[keep] + 1}


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold every RepVGG block of ``model`` into its single 3×3 conv (in place; put the model in eval mode first
    for outputs equal to the training-time blocks' in eval mode)."""
    for module in model.modules():
        if isinstance(module, RepVGGBlock):
            module.reparameterize()
    return model


def build_yolov6(options: YoloV6Options, num_classes: int) -> YoloV6Model:
    """YOLOv6 for ``num_classes`` categories labelled 1..K."""
    return YoloV6Model(options, num_classes)


def from_yolov6(state: Mapping[str, Tensor], options: YoloV6Options | None = None) -> dict[str, Tensor]:
    """A release-0.2.0 YOLOv6 checkpoint's weights (``ckpt["model"].state_dict()`` or ``ckpt["ema"]``'s) as this model's.

    The module names are the release's (``backbone.ERBlock_3.1.conv1.rbr_dense.conv.weight``,
    ``neck.Rep_p3...``, ``detect.cls_preds.0.weight``); the head's DFL projection (``detect.proj_conv.weight``,
    ``detect.proj``: unused with ``use_dfl=False``) is dropped. A key this model lacks, or a deploy-mode
    (``rbr_reparam``) checkpoint, raises a KeyError naming it.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(("detect.proj_conv.", "detect.proj")):
            continue
        if ".rbr_reparam." in key:
            raise KeyError(f"{key}: a re-parameterised (deploy) checkpoint; convert the training-time one")
        if not key.startswith(("backbone.", "neck.", "detect.")):
            raise KeyError(f"{key}: not a YOLOv6 0.2.0 backbone/neck/detect weight")
        out[key] = value
    if options is not None:
        reference = build_yolov6(options, int(out["detect.cls_preds.0.bias"].shape[0])).state_dict()
        missing = sorted(set(reference) - set(out) - {k for k in reference if k.startswith("loss.")})
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} weights of a YOLOv6-{options.variant}: {missing[:5]}")
        wrong = [k for k in out if k not in reference or reference[k].shape != out[k].shape]
        if wrong:
            raise KeyError(f"weights that do not fit a YOLOv6-{options.variant} "
                           f"(depth {options.depth}, width {options.width}): {wrong[:5]}")
    return out


FAMILY = register_family(Family(
    name="yolov6",
    options=YoloV6Options,
    build=build_yolov6,
    task="detection",
    levels=YOLOV6_LEVELS,
    default_levels=YOLOV6_LEVELS,
    inherit_prefixes=("neck.", "detect."),
    pipeline="yolo",
    protocol_amp="fp16",  # 0.2.0's yolov6/core/engine.py: amp.autocast(enabled=device != 'cpu') and amp.GradScaler
    convert_by_hand=(
        "a YOLOv6 release file (yolov6s.pt) is a whole model pickled by meituan/YOLOv6, which only that repository's "
        "code (tag 0.2.0) unpickles: with it importable, torch.save(dfd.models.yolov6.from_yolov6(torch.load(FILE, "
        "map_location='cpu', weights_only=False)['model'].float().state_dict()), OUT), then give teacher.weights=OUT "
        "instead of teacher.checkpoint"
    ),
))
