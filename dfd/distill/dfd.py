"""DFD: distilling the feature disparity differently (the paper's loss for one feature level)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_weight
from .constraint import check_constraint, masked_squared_error
from .context import MethodParams
from .disparity import disparity_map
from .region import region_mask
from .threshold import Threshold, ThresholdSpec, parse_threshold
from .transform import build_align, build_transform

# Defaults for the region weights; the paper gives no values. See docs/choices.md:
# MGD's weight (2e-5 on a sum over C·H·W / N) for the high-disparity region, and
# half of it for the low-disparity region ("split" weights, Table 1).
DEFAULT_ALPHA = 2e-5
DEFAULT_BETA = 1e-5


@dataclass
class RegionParams:
    """Constraint and weight of each disparity region (the ``region`` config group).

    hd, ld: "mse", "tf", "tf+mse" or "none" (Table 5); alpha, beta: the weights of L_HD and L_LD.
    """

    hd: str = "tf"
    ld: str = "mse"
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA


@dataclass
class DFDParams(MethodParams):
    """DFD's own options (``distill.dfd``); its regions and threshold are :class:`RegionParams` and
    :class:`~dfd.distill.threshold.Threshold`.

    temperature: T in A(F) (the paper's A(F) has none: T = 1); transform: the structure of f_trans.
    """

    temperature: float = 1.0
    transform: str = "generation"


class DFDLoss(nn.Module):
    """DFD loss for one feature level.

    L_total = L_task + α·L_HD + β·L_LD, with (for the paper's constraints)

        L_HD = (1/N) Σ_k Σ_{(i,j)∈R_HD} (F^T − f_trans(F^S))²
        L_LD = (1/N) Σ_k Σ_{(i,j)∈R_LD} (F^T − F^S)²

    R_HD = {Mask = 1}, R_LD = {Mask = 0}, Mask from :func:`region_mask` on
    D = |A(F^T) − A(F^S)|. Each region's constraint is "mse", "tf", "tf+mse" or
    "none" (``hd``, ``ld``). The disparity is computed on the raw student feature
    (channel counts may differ); the losses compare the teacher with the student
    feature aligned to the teacher's width by a 1×1 conv (identity when equal).
    Attention, disparity, threshold and mask are computed without autograd and
    the teacher feature is detached: gradients reach only the student, the
    alignment and f_trans.

    Attributes:
        transform: f_trans (None when neither region uses "tf").
        align: the 1×1 alignment (Identity when widths match).
        hd_fraction: fraction of positions in R_HD at the last call (for logging).
    """

    Params = DFDParams
    inputs: tuple[str, ...] = ()

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        hd: str = RegionParams.hd,
        ld: str = RegionParams.ld,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        threshold: ThresholdSpec = "mean",
        temperature: float = DFDParams.temperature,
        transform: str = DFDParams.transform,
    ) -> None:
        super().__init__()
        self.hd = check_constraint(hd, "hd")
        self.ld = check_constraint(ld, "ld")
        self.alpha = check_weight(alpha, "alpha")
        self.beta = check_weight(beta, "beta")
        self.threshold: Threshold = parse_threshold(threshold)  # parsed once, here
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.align = build_align(student_channels, teacher_channels)
        uses_tf = any(c in ("tf", "tf+mse") for c in (self.hd, self.ld))
        self.transform: nn.Module | None = build_transform(transform, teacher_channels) if uses_tf else None
        self.hd_fraction = torch.tensor(float("nan"))

    def _region(self, constraint: str, target: Tensor, aligned: Tensor, transformed: Tensor | None, mask: Tensor) -> Tensor:
        loss = target.new_zeros((), dtype=torch.float32)
        if constraint in ("tf", "tf+mse"):
            loss = loss + masked_squared_error(target, transformed, mask)
        if constraint in ("mse", "tf+mse"):
            loss = loss + masked_squared_error(target, aligned, mask)
        return loss

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> dict[str, Tensor]:
        """Return ``{"hd": α·L_HD, "ld": β·L_LD}`` for student/teacher maps [N, C, H, W]."""
        feat_t = feat_t.detach()
        with torch.no_grad():
            d = disparity_map(feat_s.detach().float(), feat_t.float(), self.temperature)  # selection in fp32
            mask = region_mask(d, self.threshold)
            self.hd_fraction = mask.float().mean()
        aligned = self.align(feat_s)
        transformed = self.transform(aligned) if self.transform is not None else None
        return {
            "hd": self.alpha * self._region(self.hd, feat_t, aligned, transformed, mask),
            "ld": self.beta * self._region(self.ld, feat_t, aligned, transformed, 1.0 - mask),
        }
