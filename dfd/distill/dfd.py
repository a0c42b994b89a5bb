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
from .sparse import conv_stack, required_masks, sparse_region_error, sparse_work_fraction
from .threshold import Threshold, ThresholdSpec, parse_threshold
from .transform import build_align, build_transform

# Defaults for the region weights; the paper gives no values. See docs/choices.md:
# MGD's weight (2e-5 on a sum over C·H·W / N) for the high-disparity region, and
# half of it for the low-disparity region ("split" weights, Table 1).
DEFAULT_ALPHA = 2e-5
DEFAULT_BETA = 1e-5
# Above this share of the dense convolution work, f_trans runs dense (measured: see
# `scripts/bench_dfd_loss.py sweep=1`: on a CPU the sparse path costs about 1.15x the dense one per
# unit of work, so they break even near 0.85 of the dense work (P3, 256 channels, generation block);
# 0.8 keeps sparse where it is >= ~5% faster).
DEFAULT_SPARSE_MAX_FRACTION = 0.8


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
    sparse_max_fraction: f_trans is evaluated only where its one region reads it (and on the
        receptive field that needs) while that costs at most this share of the dense convolution
        work; above it, densely. 0: always dense (no host synchronisation); 1: sparse whenever
        possible. The default is the measured CPU break-even (scripts/bench_dfd_loss.py sweep=1).
    """

    temperature: float = 1.0
    transform: str = "generation"
    sparse_max_fraction: float = DEFAULT_SPARSE_MAX_FRACTION


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
    alignment and f_trans. When one region uses f_trans, it is evaluated only on
    that region and the receptive field it needs (:mod:`.sparse`), unless that is
    more than ``sparse_max_fraction`` of the dense work; the loss is the same.

    Attributes:
        transform: f_trans (None when neither region uses "tf").
        align: the 1×1 alignment (Identity when widths match).
        hd_fraction: fraction of positions in R_HD at the last call (for logging).
        last_path: "sparse" or "dense": how f_trans was evaluated at the last call ("" without f_trans).
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
        sparse_max_fraction: float = DEFAULT_SPARSE_MAX_FRACTION,
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
        if not 0.0 <= sparse_max_fraction <= 1.0:
            raise ValueError(f"distill.dfd.sparse_max_fraction must be in [0, 1], got {sparse_max_fraction}")
        self.sparse_max_fraction = float(sparse_max_fraction)
        self.last_path = ""

    def sparse_plan(self, mask: Tensor) -> tuple[list[nn.Module], list[Tensor]] | None:
        """f_trans's layers and their :func:`~.sparse.required_masks` for the region ``mask`` when f_trans
        runs sparse there, else None (no f_trans, a structure the sparse path cannot evaluate,
        ``sparse_max_fraction`` = 0, or more than that share of the dense work). Deciding reads one
        count from the device (the sparse path's index lists need the host anyway)."""
        stack = conv_stack(self.transform) if self.transform is not None else None
        if stack is None or self.sparse_max_fraction <= 0:
            return None
        with torch.no_grad():
            sets = required_masks(stack, mask)
            work = float(sparse_work_fraction(stack, sets))  # the decision's one host sync
        return (stack, sets) if work <= self.sparse_max_fraction else None

    def _transform_errors(self, target: Tensor, aligned: Tensor, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Σ_R (F^T − f_trans(F^S))² / N for each region that uses f_trans.

        With one such region, f_trans runs sparse where :meth:`sparse_plan` says so.
        """
        regions = [name for name, c in (("hd", self.hd), ("ld", self.ld)) if c in ("tf", "tf+mse")]
        plan = self.sparse_plan(masks[regions[0]]) if len(regions) == 1 else None
        if plan is not None:
            self.last_path = "sparse"
            return {regions[0]: sparse_region_error(plan[0], target, aligned, masks[regions[0]], plan[1])}
        if not regions:
            return {}
        self.last_path = "dense"
        transformed = self.transform(aligned)
        return {r: masked_squared_error(target, transformed, masks[r]) for r in regions}

    def _region(self, constraint: str, target: Tensor, aligned: Tensor, tf_error: Tensor | None, mask: Tensor) -> Tensor:
        loss = target.new_zeros((), dtype=torch.float32)
        if constraint in ("tf", "tf+mse"):
            loss = loss + tf_error
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
        masks = {"hd": mask, "ld": 1.0 - mask}
        aligned = self.align(feat_s)
        tf = self._transform_errors(feat_t, aligned, masks)
        return {
            "hd": self.alpha * self._region(self.hd, feat_t, aligned, tf.get("hd"), masks["hd"]),
            "ld": self.beta * self._region(self.ld, feat_t, aligned, tf.get("ld"), masks["ld"]),
        }
