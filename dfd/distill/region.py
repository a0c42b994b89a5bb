"""Adaptive binary region mask (paper: Mask_{i,j} = 0 if D_{i,j} < P, else 1)."""
from __future__ import annotations

import torch
from torch import Tensor

from .threshold import ThresholdSpec, threshold_value


@torch.no_grad()
def region_mask(d: Tensor, threshold: ThresholdSpec = "mean") -> Tensor:
    """Binary mask of the high-disparity region.

    Mask_{i,j} = 0 if D_{i,j} < P, 1 otherwise

    1 marks the high-disparity region R_HD, 0 the low-disparity region R_LD. P is
    computed per image (see :func:`threshold_value`); with the default "mean" a
    uniform map is all HD. The mask is a selection: it carries no gradient.

    Args:
        d: [N, 1, H, W] disparity map.
        threshold: "mean" (paper), "median", "quantile:Q", or a fixed number.

    Returns:
        [N, 1, H, W] float mask of 0s and 1s, same dtype as ``d``.
    """
    if d.dim() != 4 or d.shape[1] != 1:
        raise ValueError(f"d must be a [N, 1, H, W] disparity map, got shape {tuple(d.shape)}")
    p = threshold_value(d, threshold)
    return (d >= p).to(d.dtype)
