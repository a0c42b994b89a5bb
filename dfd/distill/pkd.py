"""PKD: feature imitation through the Pearson correlation coefficient (baseline).

Cao et al., "PKD: General Distillation Framework for Object Detectors via
Pearson Correlation Coefficient", NeurIPS 2022. Checked against mmrazor's
``PKDLoss`` (``mmrazor/models/losses/pkd_loss.py``) and its configs
``configs/distill/mmdet/pkd/``: per-channel standardization over (N, H, W) with
the unbiased standard deviation (``Tensor.std``'s default) and ``std + 1e-6`` in
the denominator, then MSE (mean over all elements) / 2. mmrazor resizes the
student bilinearly when the spatial sizes differ; here they must match (the
FPN levels of one input do).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .checks import check_weight
from .context import MethodParams
from .transform import build_align

PKD_EPS = 1e-6


def _check_pair(feat_s: Tensor, feat_t: Tensor) -> None:
    if feat_s.dim() != 4 or feat_t.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] maps, got {tuple(feat_s.shape)} and {tuple(feat_t.shape)}")
    if feat_s.shape != feat_t.shape:
        raise ValueError(f"student and teacher maps differ in shape: {tuple(feat_s.shape)} vs {tuple(feat_t.shape)}")



def pkd_normalize(feat: Tensor, eps: float = PKD_EPS) -> Tensor:
    """Standardize each channel over the batch and the positions.

    F̂_c = (F_c − μ_c) / (σ_c + eps),  μ_c, σ_c = mean and unbiased std of F[:, c] over (N, H, W)

    Args:
        feat: [N, C, H, W] feature map (N·H·W ≥ 2, else σ is undefined).
        eps: added to σ (1e-6 as in mmrazor).

    Returns:
        [N, C, H, W] map with zero mean and (almost) unit std per channel.
    """
    if feat.dim() != 4:
        raise ValueError(f"feat must be a [N, C, H, W] feature map, got shape {tuple(feat.shape)}")
    mean = feat.mean(dim=(0, 2, 3), keepdim=True)
    std = feat.std(dim=(0, 2, 3), keepdim=True)  # unbiased (N·H·W − 1), as mmrazor
    return (feat - mean) / (std + eps)


def pkd_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """Unweighted PKD loss (the teacher is detached).

    L_PKD = 1/(2·N·C·H·W) · Σ (F̂^S − F̂^T)²   (F̂ = :func:`pkd_normalize`)

    Equal to (1 − r)·(N·H·W − 1)/(N·H·W) averaged over channels, r the Pearson
    correlation of a channel of student and teacher (up to eps). Invariant to
    any per-channel affine change a_c·F_c + b_c with a_c > 0 of either input.
    """
    _check_pair(feat_s, feat_t)
    diff = pkd_normalize(feat_s) - pkd_normalize(feat_t.detach())
    return diff.pow(2).mean() / 2


@dataclass
class PKDParams(MethodParams):
    weight: float = 10.0


class PKDLoss(nn.Module):
    """PKD for one feature level: ``{"pkd": weight · pkd_loss(align(F^S), F^T)}``.

    Args:
        student_channels, teacher_channels: widths; a 1×1 conv maps the student
            to the teacher's width when they differ (mmrazor's PKD has none; its
            configs only pair equal widths).
        weight: loss weight; mmrazor's configs use 10 for RetinaNet X101→R50
            and 6 for Faster R-CNN R101→R50.
    """

    Params = PKDParams
    inputs: tuple[str, ...] = ()

    def __init__(self, student_channels: int, teacher_channels: int, weight: float = PKDParams.weight) -> None:
        super().__init__()
        self.weight = check_weight(weight, "weight")
        self.align = build_align(student_channels, teacher_channels)

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> dict[str, Tensor]:
        """Weighted PKD term."""
        return {"pkd": self.weight * pkd_loss(self.align(feat_s), feat_t)}
