"""CWD: channel-wise distillation (baseline).

Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV
2021. Checked against mmrazor's ``ChannelWiseDivergence``
(``mmrazor/models/losses/cwd.py``): each channel's map is turned into a
distribution over the H·W positions with a softmax at temperature τ, the loss
is KL(teacher‖student)·τ² summed over all channels and images, divided by N·C.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_weight
from .context import MethodParams
from .transform import build_align


def cwd_loss(logits_s: Tensor, logits_t: Tensor, tau: float = 1.0) -> Tensor:
    """Unweighted channel-wise divergence (the teacher is detached).

    φ(y_c) = softmax_{H·W}(y_c / τ)
    L_CWD = τ²/(N·C) · Σ_{n,c} Σ_i φ(y^T_{n,c})_i · log( φ(y^T_{n,c})_i / φ(y^S_{n,c})_i )

    Args:
        logits_s, logits_t: [N, C, H, W] student and teacher maps (logits or features).
        tau: temperature τ > 0.
    """
    if logits_s.dim() != 4 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"expected two [N, C, H, W] maps of one shape, got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    n, c, h, w = logits_s.shape
    log_p_s = torch.log_softmax(logits_s.reshape(n * c, h * w) / tau, dim=1)
    log_p_t = torch.log_softmax(logits_t.detach().reshape(n * c, h * w) / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * (tau**2) / (n * c)


@dataclass
class CWDParams(MethodParams):
    tau: float = 1.0
    weight: float = 5.0


class CWDLoss(nn.Module):
    """CWD for one map: ``{"cwd": weight · cwd_loss(align(y^S), y^T, tau)}``.

    Args:
        student_channels, teacher_channels: widths; a 1×1 conv maps the student
            to the teacher's width when they differ (for logits both are the
            class count, so it is the identity).
        tau: temperature (1 for PSPNet R101→R18 on the logits).
        weight: loss weight (5 for that setting; mmrazor's CWD configs).
    """

    Params = CWDParams
    inputs: tuple[str, ...] = ()

    def __init__(self, student_channels: int, teacher_channels: int, tau: float = CWDParams.tau,
                 weight: float = CWDParams.weight) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.weight = check_weight(weight, "weight")
        self.align = build_align(student_channels, teacher_channels)

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> dict[str, Tensor]:
        """Weighted CWD term (student and teacher maps: features or logits)."""
        return {"cwd": self.weight * cwd_loss(self.align(feat_s), feat_t, self.tau)}
