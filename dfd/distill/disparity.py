"""Attention disparity map between student and teacher (paper: D = |A(F^T) − A(F^S)|)."""
from __future__ import annotations

from torch import Tensor

from .attention import spatial_attention


def disparity_map(feat_s: Tensor, feat_t: Tensor, temperature: float = 1.0) -> Tensor:
    """Attention disparity map.

    D = | A(F^T) − A(F^S) |,   A(F) = H·W · softmax_{H·W}( mean_c |F| / T )

    Channel counts may differ (the attention averages over channels); spatial
    sizes must match.

    Returns:
        [N, 1, H, W] non-negative map.
    """
    if feat_s.dim() != 4 or feat_t.dim() != 4:
        raise ValueError(f"feat_s and feat_t must be [N, C, H, W]; got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}")
    if feat_s.shape[0] != feat_t.shape[0] or feat_s.shape[2:] != feat_t.shape[2:]:
        raise ValueError(
            f"student and teacher maps must share batch and spatial size; got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}"
        )
    return (spatial_attention(feat_t, temperature) - spatial_attention(feat_s, temperature)).abs()
