"""Thresholds P that split the disparity map into high- and low-disparity regions.

The paper uses the mean of D ("mean L1 distance of spatial attention"), per image
and per feature level. Median, a quantile and a fixed value are ablations.

A threshold is given as a :class:`Threshold` (the config's ``threshold`` node) or a spec:
    "mean" | "median"      statistic of D over each image's map
    "quantile:Q"           the Q-quantile of D per image, 0 < Q < 1
    a number               a fixed P for every image
:func:`parse_threshold` turns either into a checked :class:`Threshold`, once, when a loss is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

THRESHOLD_KINDS = ("mean", "median", "quantile", "fixed")


@dataclass
class Threshold:
    """How P is computed: ``kind`` in mean | median | quantile | fixed; ``value`` is Q (quantile) or P (fixed).

    Also the schema of the ``threshold`` config group (so not frozen: Hydra overrides its fields).
    """

    kind: str = "mean"
    value: Optional[float] = None


ThresholdSpec = Union[str, float, int, Threshold]


def _checked(kind: str, value: float | None) -> Threshold:
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"threshold kind {kind!r} is unknown; expected one of {', '.join(THRESHOLD_KINDS)}")
    if kind in ("mean", "median"):
        return Threshold(kind, None)
    if value is None or isinstance(value, bool):
        raise ValueError(f"a {kind} threshold needs a value, got {value!r}")
    value = float(value)
    if kind == "quantile" and not 0.0 < value < 1.0:
        raise ValueError(f"threshold quantile:{value}: the quantile must be a number in (0, 1)")
    if kind == "fixed" and not value >= 0:
        raise ValueError(f"a fixed threshold must be >= 0 (D is non-negative), got {value}")
    return Threshold(kind, value)


def parse_threshold(threshold: ThresholdSpec) -> Threshold:
    """Normalise a threshold (spec or :class:`Threshold`) to a checked Threshold; ValueError names a bad one."""
    if isinstance(threshold, Threshold):
        return _checked(threshold.kind, threshold.value)
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return _checked("fixed", threshold)
    if threshold in ("mean", "median"):
        return Threshold(threshold)
    if isinstance(threshold, str) and threshold.startswith("quantile:"):
        try:
            q = float(threshold.split(":", 1)[1])
        except ValueError:
            q = float("nan")
        return _checked("quantile", q)
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
    t = threshold if isinstance(threshold, Threshold) else parse_threshold(threshold)
    n = d.shape[0]
    if t.kind == "fixed":
        return torch.full((n, 1, 1, 1), t.value, dtype=d.dtype, device=d.device)
    flat = d.detach().reshape(n, -1).to(torch.float64)
    if t.kind == "mean":
        p = flat.mean(dim=1)
    elif t.kind == "median":
        p = flat.median(dim=1).values
    else:
        p = torch.quantile(flat, t.value, dim=1)
    p = torch.minimum(p, flat.max(dim=1).values)
    return p.to(d.dtype).reshape(n, 1, 1, 1)
