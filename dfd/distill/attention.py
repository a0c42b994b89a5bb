"""Spatial and channel attention of a feature map (paper, Sec. 3: A(F))."""
from __future__ import annotations

import torch
from torch import Tensor


def _check_nchw(feat: Tensor, name: str = "feat") -> None:
    if feat.dim() != 4:
        raise ValueError(f"{name} must be a [N, C, H, W] feature map, got shape {tuple(feat.shape)}")


def spatial_attention(feat: Tensor, temperature: float = 1.0) -> Tensor:
    """Spatial attention of a feature map.

    A(F) = H·W · softmax_{H·W}( (1/C) · Σ_c |F_c| / T )

    The map sums to H·W per image, so a uniform response gives 1 everywhere.
    ``temperature`` is T (1 in the DFD paper, 0.5 in FGD).

    Args:
        feat: [N, C, H, W] feature map.
        temperature: softmax temperature T > 0.

    Returns:
        [N, 1, H, W] attention map.
    """
    _check_nchw(feat)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, _, h, w = feat.shape
    response = feat.abs().mean(dim=1)  # [N, H, W]
    weights = torch.softmax(response.reshape(n, h * w) / temperature, dim=1)
    return (h * w * weights).reshape(n, 1, h, w)


def channel_attention(feat: Tensor, temperature: float = 1.0) -> Tensor:
    """Channel attention (used by FGD): C · softmax_C( (1/(H·W)) · Σ_{h,w} |F| / T ) -> [N, C]."""
    _check_nchw(feat)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = feat.shape[1]
    response = feat.abs().mean(dim=(2, 3))  # [N, C]
    return c * torch.softmax(response / temperature, dim=1)
