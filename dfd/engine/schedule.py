"""Learning-rate schedule: linear warm-up, then step decay (OpenMMLab's 1x/2x)."""
from __future__ import annotations

from collections.abc import Sequence


def lr_factor(iteration: int, *, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based).

    factor = w(it) · γ^{#{m ∈ milestones : it ≥ m}},
    w(it) = r + (1 − r)·it / warmup_iters while it < warmup_iters, else 1.
    """
    warm = 1.0
    if iteration < warmup_iters:
        warm = warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return warm * gamma ** sum(iteration >= m for m in milestones)


def iteration_plan(epochs: int, steps: Sequence[int], iters_per_epoch: int, max_iters: int | None) -> tuple[int, list[int]]:
    """Total iterations and the iterations at which the lr decays, capped by ``max_iters``."""
    total = epochs * iters_per_epoch
    if max_iters is not None:
        total = min(total, max_iters)
    return total, [s * iters_per_epoch for s in steps]
