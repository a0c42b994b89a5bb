"""FGD: focal and global distillation (baseline).

Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022.
Checked against the public code (yzd-v/FGD, ``mmdet/distillation/losses/fgd.py``,
the version that indexes the masks as [h, w]) and its RetinaNet X101→R50
config (temp 0.5, α 1e-3, β 5e-4, γ 5e-4, λ 5e-6). The loss of one level is

    L = α·L_fg + β·L_bg + γ·L_at + λ·L_global

Everything is computed on the student map after the 1×1 alignment (as FGD's
code). The teacher map is detached; the global part's teacher-side block is
trainable (it sees the detached teacher map), as in FGD where both blocks are
parameters of the distiller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .attention import channel_attention, spatial_attention
from .checks import check_weight
from .context import MethodParams
from .transform import build_align

# ---------------------------------------------------------------------------
# Foreground / background masks
# ---------------------------------------------------------------------------


def _prepare_boxes(
    boxes: list[Tensor] | tuple[Tensor, ...],
    image_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...],
    feat_hw: tuple[int, int],
) -> tuple[list[Tensor], Tensor, Tensor, int, int]:
    """Validate the inputs and put them in the form :func:`_box_cells` takes.

    Returns the boxes in one float dtype on the first box's device, the image
    sizes as an [N, 4] tensor (img_w, img_h, img_w, img_h), the map size as a
    [4] tensor (W, H, W, H), and H, W.
    """
    if len(boxes) == 0:
        raise ValueError("boxes must hold one [K, 4] tensor per image; got an empty list")
    if len(image_sizes) != len(boxes):
        raise ValueError(f"got {len(boxes)} box tensors but {len(image_sizes)} image sizes")
    h, w = (int(v) for v in feat_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"feat_hw must be positive, got {tuple(feat_hw)}")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be a [K, 4] tensor (x1, y1, x2, y2), got {shape}")
    for i, size in enumerate(image_sizes):
        if len(size) != 2 or min(float(size[0]), float(size[1])) <= 0:
            raise ValueError(f"image_sizes[{i}] must be a positive (h, w), got {size!r}")
    device = boxes[0].device
    dtype = torch.float32
    for b in boxes:
        if b.is_floating_point():
            dtype = torch.promote_types(dtype, b.dtype)
    converted = [b if b.dtype == dtype and b.device == device else b.to(device=device, dtype=dtype) for b in boxes]
    image_whwh = torch.tensor(
        [[float(s[1]), float(s[0]), float(s[1]), float(s[0])] for s in image_sizes], dtype=dtype, device=device
    )
    feat_whwh = torch.tensor([w, h, w, h], dtype=dtype, device=device)
    return converted, image_whwh, feat_whwh, h, w


def _box_cells(boxes: Tensor, image_whwh: Tensor, feat_whwh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cell ranges and 1/area of boxes [..., 4] (x1, y1, x2, y2).

    x' = x / img_w · W,  y' = y / img_h · H   (FGD's order of operations)
    low = (floor x1', floor y1'),  high = (ceil x2', ceil y2')   (inclusive, unclipped)
    area = 1 / (ceil y2' − floor y1' + 1) / (ceil x2' − floor x1' + 1)

    Shared by :func:`fgd_masks` and :func:`fgd_masks_reference`, so both do the
    same floating-point arithmetic. Returns low and high as int64 [..., 2] in
    (column, row) order and area as float32 [...].
    """
    scaled = boxes / image_whwh * feat_whwh
    low = scaled[..., :2].floor().long()
    high = scaled[..., 2:].ceil().long()
    cells = (high - low + 1).to(torch.float32)  # (W_k, H_k)
    area = 1.0 / cells[..., 1] / cells[..., 0]
    return low, high, area


def _background(fg: Tensor) -> Tensor:
    """M^bg = 1 where M^fg = 0, normalized to sum 1 per image (left all zeros when empty)."""
    bg = (fg <= 0).to(fg.dtype)
    total = bg.sum(dim=(1, 2), keepdim=True)
    return bg / total.clamp_min(1.0)


def fgd_masks(
    boxes: list[Tensor] | tuple[Tensor, ...],
    image_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...],
    feat_hw: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """FGD's foreground and background masks of one level, vectorized over images and boxes.

    M^fg_{h,w} = max_{boxes k ∋ (h,w)} 1 / (H_k · W_k),   0 outside every box
    M^bg_{h,w} = [M^fg_{h,w} = 0] / Σ_{h',w'} [M^fg_{h',w'} = 0]   (all zeros if nothing is background)

    A box (x1, y1, x2, y2) in the input's pixels is scaled to the map
    (x / img_w · W, y / img_h · H); it covers rows floor(y1')..ceil(y2') and
    columns floor(x1')..ceil(x2'), both ends included, and
    H_k · W_k = (hmax − hmin + 1)·(wmax − wmin + 1) counts those unclipped
    indices (FGD's code).

    Border behaviour: a box reaching the right or bottom edge of the input
    has ceil(x2') = W (or ceil(y2') = H), one past the last cell; the writing
    is clipped to the map, but the cell count still includes that phantom
    column/row, so such a box gets a smaller value than an interior box of
    the same size (FGD does the same through slice clipping). A box whose
    scaled edge falls exactly on a cell boundary also covers the next cell
    (ceil of an integer is that integer, and the range is inclusive).
    Negative indices (boxes outside the input) are clipped to 0 here, where
    FGD's Python slicing would wrap around; detection boxes are clipped to
    the image, so this does not arise in practice. A box whose range is
    empty (x2 < x1 beyond a cell) writes nothing.

    Args:
        boxes: one [K, 4] tensor per image (K may be 0), (x1, y1, x2, y2) in
            pixels of the input the feature map covers.
        image_sizes: (h, w) of that input for each image. FGD's code passes
            mmdet's ``img_shape``, the resized image before batch padding,
            although the map covers the padded batch; the caller decides.
        feat_hw: (H, W) of the feature map.

    Returns:
        (fg, bg), two float32 [N, H, W] tensors on the boxes' device.

    Gives the same values as the per-box loop :func:`fgd_masks_reference`.
    The boxes are padded to [N, K_max, 4] with a validity mask; per-box row
    and column range masks come from broadcasting against arange; the max is
    taken over the box axis of their [N, K_max, H, W] product.
    """
    boxes_f, image_whwh, feat_whwh, h, w = _prepare_boxes(boxes, image_sizes, feat_hw)
    n, device = len(boxes_f), image_whwh.device
    kmax = max(b.shape[0] for b in boxes_f)
    if kmax == 0:
        fg = torch.zeros((n, h, w), dtype=torch.float32, device=device)
        return fg, _background(fg)
    counts = torch.tensor([b.shape[0] for b in boxes_f], device=device)
    padded = pad_sequence(boxes_f, batch_first=True)  # [N, K, 4]
    low, high, area = _box_cells(padded, image_whwh[:, None, :], feat_whwh)  # [N, K, 2], [N, K, 2], [N, K]
    valid = torch.arange(kmax, device=device) < counts[:, None]  # [N, K]
    value = torch.where(valid, area, 0.0)
    # The max is taken over the boxes' ranks by value (rank r: r − 1 boxes of
    # the image have a smaller value) in the smallest integer type that holds
    # them, so the [N, K, H, W] intermediate takes 1 byte per entry instead of
    # 4; each rank's value is then looked up exactly. Equal values share a
    # rank; a box with an empty range never wins, whatever its value (inf
    # when a range is one past empty).
    rank = (value[:, None, :] < value[:, :, None]).sum(dim=2) + 1  # [N, K], in 1..K
    table = value.new_zeros(n, kmax + 1).scatter_(1, rank, value)  # rank -> value; rank 0 (no box) -> 0
    rank_dtype = torch.uint8 if kmax < 2**8 else torch.int16 if kmax < 2**15 else torch.int32
    index = torch.arange(max(h, w), device=device)
    inside = (index >= low[..., None]) & (index <= high[..., None])  # [N, K, 2, max(H, W)]: columns, rows
    col_in = inside[:, :, 0, :w]  # [N, K, W]
    row_rank = torch.where(inside[:, :, 1, :h] & valid[..., None], rank.to(rank_dtype)[..., None], 0)  # [N, K, H]
    best = (row_rank[..., :, None] * col_in[..., None, :]).amax(dim=1)  # [N, H, W], 0 = no box
    fg = table.gather(1, best.reshape(n, h * w).long()).reshape(n, h, w)
    return fg, _background(fg)


def fgd_masks_reference(
    boxes: list[Tensor] | tuple[Tensor, ...],
    image_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...],
    feat_hw: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The definition of :func:`fgd_masks` as a loop over images and boxes (as FGD's code).

    Kept as the oracle for the tests and the benchmark (scripts/bench_fgd_masks.py);
    training uses the vectorized :func:`fgd_masks`. Each box writes
    max(current, 1/(H_k·W_k)) into its cells, clipped to the map.
    """
    boxes_f, image_whwh, feat_whwh, h, w = _prepare_boxes(boxes, image_sizes, feat_hw)
    n, device = len(boxes_f), image_whwh.device
    fg = torch.zeros((n, h, w), dtype=torch.float32, device=device)
    bg = torch.ones((n, h, w), dtype=torch.float32, device=device)
    for i, b in enumerate(boxes_f):
        low, high, area = _box_cells(b, image_whwh[i], feat_whwh)
        for j in range(b.shape[0]):
            c0, r0 = max(int(low[j, 0]), 0), max(int(low[j, 1]), 0)
            c1, r1 = min(int(high[j, 0]), w - 1), min(int(high[j, 1]), h - 1)
            if r0 > r1 or c0 > c1:
                continue
            cells = fg[i, r0 : r1 + 1, c0 : c1 + 1]
            fg[i, r0 : r1 + 1, c0 : c1 + 1] = torch.maximum(cells, area[j])
        bg[i] = torch.where(fg[i] > 0, 0.0, 1.0)
        total = bg[i].sum()
        if total > 0:
            bg[i] = bg[i] / total
    return fg, bg


# ---------------------------------------------------------------------------
# Focal part
# ---------------------------------------------------------------------------


def fgd_focal_loss(
    feat_s: Tensor, feat_t: Tensor, fg: Tensor, bg: Tensor, temperature: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Unweighted foreground and background feature losses (the teacher is detached).

    L_fg = (1/N) Σ_{n,c,h,w} M^fg_{n,h,w} · A^S_{n,h,w} · A^C_{n,c} · (F^T − F^S)²
    L_bg = (1/N) Σ_{n,c,h,w} M^bg_{n,h,w} · A^S_{n,h,w} · A^C_{n,c} · (F^T − F^S)²

    A^S, A^C are the teacher's spatial and channel attention at ``temperature``
    (:func:`spatial_attention`, :func:`channel_attention`), used for both
    features. As in FGD's code, both maps are multiplied by √A^S · √A^C · √M
    before a summed squared error (same value as the weights above).

    Args:
        feat_s: [N, C, H, W] student map (already aligned to the teacher's width).
        feat_t: [N, C, H, W] teacher map.
        fg, bg: [N, H, W] masks from :func:`fgd_masks`.
    """
    if feat_s.dim() != 4 or feat_s.shape != feat_t.shape:
        raise ValueError(
            f"expected two [N, C, H, W] maps of one shape, got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}"
        )
    n, _, h, w = feat_t.shape
    if fg.shape != (n, h, w) or bg.shape != (n, h, w):
        raise ValueError(f"masks must be [N, H, W] = {(n, h, w)}, got {tuple(fg.shape)} and {tuple(bg.shape)}")
    feat_t = feat_t.detach()
    s_att = spatial_attention(feat_t, temperature)  # [N, 1, H, W]
    c_att = channel_attention(feat_t, temperature)[:, :, None, None]  # [N, C, 1, 1]
    scale = torch.sqrt(s_att) * torch.sqrt(c_att)  # [N, C, H, W]
    fea_t, fea_s = feat_t * scale, feat_s * scale
    sqrt_fg = torch.sqrt(fg.to(feat_t.dtype))[:, None]
    sqrt_bg = torch.sqrt(bg.to(feat_t.dtype))[:, None]
    fg_loss = (fea_s * sqrt_fg - fea_t * sqrt_fg).pow(2).sum() / n
    bg_loss = (fea_s * sqrt_bg - fea_t * sqrt_bg).pow(2).sum() / n
    return fg_loss, bg_loss


def fgd_attention_loss(feat_s: Tensor, feat_t: Tensor, temperature: float = 0.5) -> Tensor:
    """Unweighted attention loss (the teacher is detached).

    L_at = (1/N) · ( Σ_{n,h,w} |A^S(F^T) − A^S(F^S)| + Σ_{n,c} |A^C(F^T) − A^C(F^S)| )

    Args:
        feat_s: [N, C, H, W] student map (aligned); feat_t: teacher map.
        temperature: T of both attentions (0.5 in FGD).
    """
    if feat_s.dim() != 4 or feat_s.shape != feat_t.shape:
        raise ValueError(
            f"expected two [N, C, H, W] maps of one shape, got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}"
        )
    feat_t = feat_t.detach()
    n = feat_s.shape[0]
    channel = (channel_attention(feat_s, temperature) - channel_attention(feat_t, temperature)).abs().sum()
    spatial = (spatial_attention(feat_s, temperature) - spatial_attention(feat_t, temperature)).abs().sum()
    return (channel + spatial) / n


# ---------------------------------------------------------------------------
# Global part
# ---------------------------------------------------------------------------


class FGDGlobalContext(nn.Module):
    """FGD's GcBlock-like relation module for one side (student or teacher).

    R(F) = F + W_v2 · ReLU( LN( W_v1 · Σ_j softmax_j(W_k F_j) · F_j ) )

    W_k is ``conv_mask`` (1×1, C→1; softmax over the H·W positions), W_v1 a
    1×1 conv C→C/2, LN a LayerNorm over [C/2, 1, 1], W_v2 a 1×1 conv C/2→C
    (``channel_add``). Initialisation as FGD (mmcv): conv_mask Kaiming normal,
    fan_in, ReLU gain, bias 0; the last conv of channel_add all zeros (so R is
    the identity at the start); the others PyTorch's default. FGD uses an
    in-place ReLU; here it is out of place (same values). conv_mask's bias
    shifts all logits of the softmax equally, so it never changes the output
    and its gradient is 0 (kept for parity with FGD's parameters).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"FGD's global block needs at least 2 channels (it halves them), got {channels}")
        hidden = channels // 2
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """FGD's initialisation (see the class docstring)."""
        nn.init.kaiming_normal_(self.conv_mask.weight, a=0, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        last = self.channel_add[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def context(self, feat: Tensor) -> Tensor:
        """Global context Σ_j softmax_j(W_k F_j) · F_j -> [N, C, 1, 1]."""
        n, c, h, w = feat.shape
        weights = torch.softmax(self.conv_mask(feat).reshape(n, h * w), dim=1)  # [N, H·W]
        return torch.bmm(feat.reshape(n, c, h * w), weights[:, :, None]).reshape(n, c, 1, 1)

    def forward(self, feat: Tensor) -> Tensor:
        """R(F), same shape as ``feat``."""
        return feat + self.channel_add(self.context(feat))


def fgd_global_loss(relation_s: Tensor, relation_t: Tensor) -> Tensor:
    """Unweighted global (relation) loss.

    L_global = (1/N) Σ_{n,c,h,w} ( R_t(F^T) − R_s(F^S) )²

    ``relation_t`` is the output of the teacher-side block on the detached
    teacher map; it is not detached here, so the teacher-side block trains
    (FGD's choice).
    """
    if relation_s.shape != relation_t.shape:
        raise ValueError(f"relation maps differ in shape: {tuple(relation_s.shape)} vs {tuple(relation_t.shape)}")
    return (relation_s - relation_t).pow(2).sum() / relation_s.shape[0]


# ---------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------


@dataclass
class FGDParams(MethodParams):
    temperature: float = 0.5
    alpha_fgd: float = 1e-3
    beta_fgd: float = 5e-4
    gamma_fgd: float = 5e-4
    lambda_fgd: float = 5e-6


class FGDLoss(nn.Module):
    """FGD for one feature level.

    Returns ``{"fg": α·L_fg, "bg": β·L_bg, "attention": γ·L_at, "global": λ·L_global}``
    (:func:`fgd_focal_loss`, :func:`fgd_attention_loss`, :func:`fgd_global_loss`)
    from the aligned student map, the detached teacher map and the masks of
    :func:`fgd_masks` built from ``boxes`` and ``image_sizes`` (required).

    Args:
        student_channels, teacher_channels: widths (1×1 alignment when they differ).
        temperature: T of the attentions (0.5).
        alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd: α, β, γ, λ. Defaults are
            FGD's RetinaNet configs; FGD's code defaults γ to 1e-3, its
            RetinaNet configs set 5e-4, which is used here.

    Attributes:
        global_s, global_t: the student-side and teacher-side relation blocks
            (:class:`FGDGlobalContext`, separate parameters as in FGD).
    """

    Params = FGDParams
    inputs: tuple[str, ...] = ("boxes", "image_sizes")

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        temperature: float = FGDParams.temperature,
        alpha_fgd: float = FGDParams.alpha_fgd,
        beta_fgd: float = FGDParams.beta_fgd,
        gamma_fgd: float = FGDParams.gamma_fgd,
        lambda_fgd: float = FGDParams.lambda_fgd,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.alpha_fgd = check_weight(alpha_fgd, "alpha_fgd")
        self.beta_fgd = check_weight(beta_fgd, "beta_fgd")
        self.gamma_fgd = check_weight(gamma_fgd, "gamma_fgd")
        self.lambda_fgd = check_weight(lambda_fgd, "lambda_fgd")
        self.align = build_align(student_channels, teacher_channels)
        self.global_s = FGDGlobalContext(teacher_channels)
        self.global_t = FGDGlobalContext(teacher_channels)

    def forward(
        self,
        feat_s: Tensor,
        feat_t: Tensor,
        *,
        boxes: list[Tensor] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Weighted FGD terms for [N, C_s, H, W] student and [N, C_t, H, W] teacher maps."""
        if boxes is None or image_sizes is None:
            raise ValueError(
                "FGDLoss needs the ground-truth boxes: pass boxes=[one [K, 4] tensor per image] "
                "and image_sizes=[(h, w) per image]"
            )
        if feat_s.dim() != 4 or feat_t.dim() != 4:
            raise ValueError(f"expected [N, C, H, W] maps, got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}")
        n, _, h, w = feat_t.shape
        if feat_s.shape[0] != n or feat_s.shape[-2:] != feat_t.shape[-2:]:
            raise ValueError(
                f"student and teacher maps must share N, H, W: {tuple(feat_s.shape)} vs {tuple(feat_t.shape)}"
            )
        if len(boxes) != n:
            raise ValueError(f"got {len(boxes)} box tensors for a batch of {n} images")
        aligned = self.align(feat_s)
        target = feat_t.detach()
        fg, bg = fgd_masks(boxes, image_sizes, (h, w))
        fg = fg.to(device=target.device, dtype=target.dtype)
        bg = bg.to(device=target.device, dtype=target.dtype)
        fg_loss, bg_loss = fgd_focal_loss(aligned, target, fg, bg, self.temperature)
        attention = fgd_attention_loss(aligned, target, self.temperature)
        relation = fgd_global_loss(self.global_s(aligned), self.global_t(target))
        return {
            "fg": self.alpha_fgd * fg_loss,
            "bg": self.beta_fgd * bg_loss,
            "attention": self.gamma_fgd * attention,
            "global": self.lambda_fgd * relation,
        }
