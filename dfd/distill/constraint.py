"""Region constraints: how a region of the student feature is pulled toward the teacher.

    "mse"     L_R = (1/N) Σ_k Σ_{(i,j)∈R} (F^T − F^S)²              (paper: L_LD)
    "tf"      L_R = (1/N) Σ_k Σ_{(i,j)∈R} (F^T − f_trans(F^S))²     (paper: L_HD)
    "tf+mse"  the sum of both
    "none"    the region is not distilled
"""
from __future__ import annotations

from torch import Tensor

CONSTRAINTS = ("mse", "tf", "tf+mse", "none")


def check_constraint(value: str, key: str = "constraint") -> str:
    """Return ``value`` if it names a constraint; raise ValueError naming ``key`` otherwise."""
    if value not in CONSTRAINTS:
        raise ValueError(f"{key}={value!r} is not a region constraint; expected one of {', '.join(CONSTRAINTS)}")
    return value


def masked_squared_error(target: Tensor, pred: Tensor, mask: Tensor | None = None) -> Tensor:
    """Region distillation loss.

    L_R = (1/N) Σ_k^C Σ_{(i,j) ∈ R} (F^T_{i,j,k} − G_{i,j,k})²

    where G is the (aligned, possibly transformed) student feature and R the
    positions where ``mask`` is 1 (all positions when ``mask`` is None).
    Computed in float32 whatever the autocast dtype of the inputs.

    Args:
        target: teacher feature [N, C, H, W] (should be detached by the caller).
        pred: student-side feature [N, C, H, W].
        mask: [N, 1, H, W] 0/1 region mask, or None.
    """
    if target.shape != pred.shape:
        raise ValueError(f"teacher and student features differ in shape: {tuple(target.shape)} vs {tuple(pred.shape)}")
    sq = (target.float() - pred.float()).pow(2)
    if mask is not None:
        sq = sq * mask.float()
    return sq.sum() / target.shape[0]
