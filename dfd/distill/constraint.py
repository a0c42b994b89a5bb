"""Region constraints: how a region of the student feature is pulled toward the teacher.

    "mse"     L_R = (1/N) Σ_k Σ_{(i,j)∈R} (F^T − F^S)²              (paper: L_LD)
    "tf"      L_R = (1/N) Σ_k Σ_{(i,j)∈R} (F^T − f_trans(F^S))²     (paper: L_HD)
    "tf+mse"  the sum of both
    "none"    the region is not distilled
"""
from __future__ import annotations

import torch
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
    return squared_error_sum(target, pred, mask) / target.shape[0]


def squared_error_sum(target: Tensor, pred: Tensor, mask: Tensor | None = None) -> Tensor:
    """Σ m·(t − p)² over every element, in float32 (``mask`` broadcast against ``pred``; None: m = 1).

    The sum inside :func:`masked_squared_error`, for any layout (the sparse f_trans compares [C, K] columns).
    """
    return _MaskedSquaredError.apply(target.float(), pred.float(), None if mask is None else mask.float())


class _MaskedSquaredError(torch.autograd.Function):
    """Σ m·(t − p)² with its gradients, in three passes over the map instead of autograd's eight.

    Forward: d = p − t, w = m·d, loss = Σ d·w; backward: ∂/∂p = 2·w, ∂/∂t = −2·w (w is kept,
    one map). Autograd of the plain expression writes (t − p), its square and the product with the
    mask, then pow's and mul's backwards and a negation: each a pass over a [N, C, H, W] map.
    The sum stays torch's (pairwise, as accurate as before; a BLAS dot is faster but drifts by
    about 1e-5 over a P3 map).
    """

    @staticmethod
    def forward(ctx, target: Tensor, pred: Tensor, mask: Tensor | None) -> Tensor:  # noqa: ANN001 (autograd's ctx)
        diff = pred - target
        weighted = diff if mask is None else diff * mask
        ctx.save_for_backward(weighted)
        return (diff * weighted).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        (weighted,) = ctx.saved_tensors
        g_pred = weighted * (2 * grad) if ctx.needs_input_grad[1] else None
        g_target = weighted * (-2 * grad) if ctx.needs_input_grad[0] else None
        return g_target, g_pred, None
