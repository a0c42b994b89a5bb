"""Plain feature imitation: MSE over the whole map (no region split)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .checks import check_weight
from .constraint import masked_squared_error
from .context import MethodParams
from .transform import build_align


@dataclass
class MSEParams(MethodParams):
    weight: float = 2e-5


class FeatureMSELoss(nn.Module):
    """weight · (1/N) Σ_k Σ_{i,j} (F^T − align(F^S))² over every position.

    Equal to DFD with both regions on "mse" and α = β = weight.
    """

    Params = MSEParams
    inputs: tuple[str, ...] = ()

    def __init__(self, student_channels: int, teacher_channels: int, weight: float = MSEParams.weight) -> None:
        super().__init__()
        self.weight = check_weight(weight, "weight")
        self.align = build_align(student_channels, teacher_channels)

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> dict[str, Tensor]:
        return {"mse": self.weight * masked_squared_error(feat_t.detach(), self.align(feat_s))}
