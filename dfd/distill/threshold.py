"""Thresholds P that split the disparity map into high- and low-disparity regions.

The paper uses the mean of D ("mean L1 distance of spatial attention"), per image
and per feature level. Median, a quantile and a fixed value are ablations.

A threshold is given as:
    "mean" | "median"      statistic of D over each image's map
    "quantile:Q"           the Q-quantile of D per image, 0 < Q < 1
    a number               a fixed P for every image
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

ThresholdSpec = Union[str, float, int]
THRESHOLD_KINDS = ("mean", "median", "quantile", "fixed")


def parse_threshold(threshold: ThresholdSpec) -> tuple[str, float | None]:
    """Normalise a threshold spec to ``(kind, value)``; raise ValueError naming a bad spec."""
    if isinstance(threshold, bool):
        raise ValueError(f"threshold must be 'mean', 'median', 'quantile:Q' or a number, got {threshold!r}")
    if isinstance(threshold, (int, float)):
        if threshold < 0:
            raise ValueError(f"a fixed threshold must be >= 0 (D is non-negative), got {threshold}")
        return "fixed", float(threshold)
    if threshold in ("mean", "median"):
        return threshold, None
    if isinstance(threshold, str) and threshold.startswith("quantile:"):
        try:
            q = float(threshold.split(":", 1)[1])
        except ValueError:
            q = float("nan")
        if not 0.0 < q < 1.0:
            raise ValueError(f"threshold {threshold!r}: the quantile must be a number in (0, 1)")
        return "quantile", q
    raise ValueError(f"threshold must be 'mean', 'median', 'quantile:Q' or a number, got {threshold!r}")


def threshold_value(d: Tensor, threshold: ThresholdSpec = "mean") -> Tensor:
    """Per-image threshold P for a disparity map ``d`` [N, 1, H, W] -> [N, 1, 1, 1].

    mean:       P = (1/(H·W)) Σ_{i,j} D_{i,j}
    median:     P = median_{i,j} D_{i,j}   (lower median)
    quantile:   P = quantile_Q of D_{i,j}   (linear interpolation)
    fixed:      P = value

    Statistics are computed in float64 and capped at max D, so a uniform map gives
    P equal to its value exactly (no rounding can push P above every D).
    """
    kind, value = parse_threshold(threshold)
    n = d.shape[0]
    if kind == "fixed":
        return torch.full((n, 1, 1, 1), value, dtype=d.dtype, device=d.device)
    flat = d.detach().reshape(n, -1).to(torch.float64)
    if kind == "mean":
        p = flat.mean(dim=1)
    elif kind == "median":
        p = flat.median(dim=1).values
    else:
        p = torch.quantile(flat, value, dim=1)
    p = torch.minimum(p, flat.max(dim=1).values)
    return p.to(d.dtype).reshape(n, 1, 1, 1)
