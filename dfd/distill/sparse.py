"""f_trans evaluated only where a region loss reads it (paper: L_HD).

L_HD reads f_trans(F^S) only inside R_HD. For a stack of stride-1 "same" convolutions and
pointwise activations (every structure of :mod:`.transform`), the output at R needs the
last layer's input only on R dilated by that layer's kernel radius, that layer's input on a
further dilation, and so on. :func:`sparse_region_error` evaluates each convolution only at
the positions it must produce (an im2col of those positions times the weight matrix), so its
cost follows the region's size instead of the map's. Loss and gradients are those of the
dense computation (the positions it skips never reach the loss).

Cost and host synchronisation: the positions are index lists whose length depends on the
mask, so the sparse path synchronises with the host (one small count per level for the
dense/sparse decision, then one ``nonzero`` per set). On a CPU that is free; where it is not
wanted, ``sparse_max_fraction = 0`` keeps the dense path and no synchronisation at all.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .constraint import squared_error_sum

# Layers that act on each position alone (so they commute with any selection of positions).
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity)


def _flatten(module: nn.Module) -> list[nn.Module] | None:
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    flat: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            inner = _flatten(layer)
            if inner is None:
                return None
            flat.extend(inner)
        elif isinstance(layer, nn.Conv2d):
            k = layer.kernel_size
            same = k[0] == k[1] and k[0] % 2 == 1 and layer.padding == (k[0] // 2, k[0] // 2)
            plain = layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
            if not (same and plain and layer.padding_mode == "zeros"):
                return None
            flat.append(layer)
        elif isinstance(layer, POINTWISE):
            flat.append(layer)
        else:
            return None
    return flat


def conv_stack(module: nn.Module) -> list[nn.Module] | None:
    """The layers of ``module`` when it is a chain the sparse path can evaluate, else None.

    Supported: ``nn.Conv2d`` with stride 1, dilation 1, one group, an odd square kernel and
    zero padding k // 2 (the map keeps its size), and the pointwise activations in
    :data:`POINTWISE` (all map 0 to 0, so they commute with zero padding), alone or in
    (nested) ``nn.Sequential``, with at least one convolution.
    """
    flat = _flatten(module)
    return flat if flat is not None and any(isinstance(layer, nn.Conv2d) for layer in flat) else None


def _radius(layer: nn.Module) -> int:
    return layer.kernel_size[0] // 2 if isinstance(layer, nn.Conv2d) else 0


def required_masks(layers: Sequence[nn.Module], mask: Tensor) -> list[Tensor]:
    """Where each convolution of ``layers`` must be evaluated for the output on ``mask``.

    S_L = R,  S_{l-1} = dilate(S_l, r_l) ∩ image   (r_l: kernel radius of conv l)

    Returns one bool [N, H, W] mask per ``nn.Conv2d``, in layer order (the first is the largest).
    """
    need = mask.reshape(mask.shape[0], 1, *mask.shape[-2:]).bool()
    sets: list[Tensor] = []
    for layer in reversed(layers):
        if isinstance(layer, nn.Conv2d):
            sets.append(need[:, 0])
            r = _radius(layer)
            if r:
                need = F.max_pool2d(need.float(), 2 * r + 1, stride=1, padding=r) > 0
    return sets[::-1]


def sparse_work_fraction(layers: Sequence[nn.Module], sets: Sequence[Tensor]) -> Tensor:
    """The sparse path's convolution work relative to the dense one (a 0-dim tensor, no sync).

    fraction = Σ_l |S_l| · k_l² / (N·H·W · Σ_l k_l²)
    """
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    cost = torch.tensor([float(c.kernel_size[0] ** 2) for c in convs], device=sets[0].device)
    counts = torch.stack([s.sum() for s in sets]).float()
    return (counts * cost).sum() / (sets[0].numel() * cost.sum())


def _rows(sets_mask: Tensor, pad: int) -> Tensor:
    """Row of each True position of ``sets_mask`` [N, H, W] in the flattened map padded by ``pad``."""
    n, h, w = sets_mask.shape
    nz = sets_mask.nonzero()
    return (nz[:, 0] * (h + 2 * pad) + nz[:, 1] + pad) * (w + 2 * pad) + nz[:, 2] + pad


def _patches(layer: nn.Conv2d, source: Tensor, rows: Tensor, width: int, lookup: Tensor) -> Tensor:
    """The im2col of ``layer`` at ``rows`` of a padded map (row index r = (n·(H+2p) + y)·(W+2p) + x): [K, k·k·C].

    ``source`` holds some of the map's rows, channels last, then one zero row; ``lookup`` gives each
    padded-map row's place in it (the zero row for every row it does not hold: padding, or a position
    no output reads).
    """
    r = _radius(layer)
    d = torch.arange(-r, r + 1, device=rows.device)
    offsets = (d[:, None] * width + d[None, :]).reshape(-1)  # kernel order (ky, kx)
    index = lookup[(rows[:, None] + offsets[None, :]).reshape(-1)]
    return source.index_select(0, index).reshape(rows.shape[0], offsets.numel() * source.shape[1])  # channel fastest


def _conv_at(layer: nn.Conv2d, patches: Tensor, channel_major: bool) -> Tensor:
    """``layer`` at the positions of ``patches`` [K, k·k·C]: [K, C_out], or [C_out, K] when ``channel_major``.

    out_r = b + W · vec(patch_r)
    """
    weight = layer.weight.permute(0, 2, 3, 1).reshape(layer.out_channels, -1)
    if channel_major:  # W · patchesᵀ: the transposition is the GEMM's, not a copy
        out = weight @ patches.t()
        return out if layer.bias is None else out + layer.bias[:, None]
    if layer.bias is None:
        return patches @ weight.t()
    return torch.addmm(layer.bias, patches, weight.t())


class _Rows(torch.autograd.Function):
    """[N, C, H, W] -> [N·H·W + 1, C]: channels last, one row per position, then a zero row.

    One copy each way, each the faster of two on the 2-core CPU (one thread, a P3 map of 1333×800):
    forward, one 4-D permuted copy (about half the time of a 2-D transpose per image); backward, a
    2-D transpose per image (about a quarter of the time of the 4-D permuted copy). The gradient
    comes back contiguous in [N, C, H, W]: autograd's permute would hand back a channels-last view,
    and adding that to the gradient of the feature's other uses, e.g. L_LD's, is a slow strided add.
    """

    @staticmethod
    def forward(ctx, feat: Tensor) -> Tensor:  # noqa: ANN001 (autograd's ctx)
        n, c, h, w = feat.shape
        ctx.shape = (n, c, h, w)
        rows = feat.new_empty(n * h * w + 1, c)
        rows[-1].zero_()
        rows[:-1].view(n, h, w, c).copy_(feat.permute(0, 2, 3, 1))
        return rows

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        n, c, h, w = ctx.shape
        out = grad.new_empty(n, c, h * w)
        for plane, image in zip(out, grad[:-1].view(n, h * w, c)):
            plane.copy_(image.t())
        return out.reshape(n, c, h, w)


def _lookup(n: int, h: int, w: int, pad: int, held: Tensor | None, device: torch.device) -> Tensor:
    """Each row of the map padded by ``pad`` -> its row in a source of ``count`` rows then a zero row.

    ``held``: the padded-map rows the source holds, in its order; None: the map's own positions in
    raster order (the source of :class:`_Rows`).
    """
    count = n * h * w if held is None else held.shape[0]
    lookup = torch.full((n, h + 2 * pad, w + 2 * pad), count, dtype=torch.long, device=device)
    ids = torch.arange(count, device=device)
    if held is None:
        lookup[:, pad:pad + h, pad:pad + w] = ids.reshape(n, h, w)
    else:
        lookup.view(-1)[held] = ids
    return lookup.view(-1)


def sparse_transform(layers: Sequence[nn.Module], feat: Tensor, sets: Sequence[Tensor]) -> Tensor:
    """f_trans(F) at the positions of ``sets[-1]`` only -> [C_out, K], channel-major (columns in ``nonzero`` order).

    ``sets`` are :func:`required_masks` of the output region. The first convolution reads the map's
    rows (:class:`_Rows`), each later one only the rows the one before produced (plus one zero row
    for padding, through a lookup table): :func:`required_masks` makes them all the rows it can read.
    """
    n, _, h, w = feat.shape
    pad = max(_radius(layer) for layer in layers)
    convs = sum(isinstance(layer, nn.Conv2d) for layer in layers)
    source, lookup, rows, values, i = _Rows.apply(feat), _lookup(n, h, w, pad, None, feat.device), None, None, 0
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            if values is not None:  # the previous conv's rows, then a zero row
                source, lookup = torch.cat([values, values.new_zeros(1, values.shape[1])]), _lookup(n, h, w, pad, rows, feat.device)
            rows = _rows(sets[i], pad)
            values, i = _conv_at(layer, _patches(layer, source, rows, w + 2 * pad, lookup), channel_major=i == convs - 1), i + 1
        elif values is None:
            source = layer(source)  # pointwise before the first conv: on every row (0 stays 0)
        else:
            values = layer(values)
    return values


def _columns(target: Tensor, region: Tensor) -> Tensor:
    """``target`` [N, C, H, W] at the True positions of ``region`` [N, H, W]: [C, K] in ``nonzero`` order."""
    n, c, h, w = target.shape
    flat = region.reshape(n, h * w)
    return torch.cat([t.reshape(c, h * w).index_select(1, m.nonzero()[:, 0]) for t, m in zip(target, flat)], dim=1)


def sparse_region_error(layers: Sequence[nn.Module], target: Tensor, feat: Tensor, mask: Tensor, sets: Sequence[Tensor] | None = None) -> Tensor:
    """Region distillation loss of a transformed student, f_trans evaluated on R (and what it needs) only.

    L_R = (1/N) Σ_k^C Σ_{(i,j) ∈ R} (F^T_{i,j,k} − f_trans(F^S)_{i,j,k})²     (paper: L_HD with R = R_HD)

    Equal (to float rounding) to ``masked_squared_error(target, f_trans(feat), mask)``.

    Args:
        layers: :func:`conv_stack` of f_trans.
        target: teacher feature [N, C, H, W] (detached by the caller).
        feat: aligned student feature [N, C', H, W].
        mask: [N, 1, H, W] 0/1 region mask (R = the positions where it is 1).
        sets: :func:`required_masks` of ``mask`` if already computed.
    """
    if sets is None:
        sets = required_masks(layers, mask)
    region = mask.reshape(mask.shape[0], *mask.shape[-2:]).bool()
    pred = sparse_transform(layers, feat, sets)
    return squared_error_sum(_columns(target, region), pred) / target.shape[0]
