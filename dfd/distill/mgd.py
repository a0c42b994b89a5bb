"""MGD: masked generative distillation (baseline).

Yang et al., "Masked Generative Distillation", ECCV 2022. Checked against the
detection loss of the public code (yzd-v/MGD, ``det/mmdet/distillation/losses/mgd.py``)
and its RetinaNet config: the student map is aligned to the teacher's width
(1×1 conv when widths differ), multiplied by a random spatial mask shared by
all channels (0 where u > 1 − λ, u ~ U[0, 1), so a fraction λ = 0.65 of the
positions is dropped), passed through the generation block conv3×3 → ReLU →
conv3×3, and compared with the teacher by a squared error summed over
C·H·W and all images, divided by N, times α = 2e-5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_weight
from .context import MethodParams
from .transform import build_align, build_transform


def mgd_random_mask(
    n: int,
    h: int,
    w: int,
    lambda_mgd: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random spatial mask of MGD.

    M_{n,i,j} = 0 if u_{n,i,j} > 1 − λ else 1,  u ~ U[0, 1)   -> [N, 1, H, W]

    With a ``generator`` the draw is made on its device and moved to
    ``device``; without one, on ``device`` from the global RNG (MGD's code
    draws on the CPU and copies; only the random stream differs).
    """
    if not 0.0 <= lambda_mgd <= 1.0:
        raise ValueError(f"lambda_mgd must be in [0, 1], got {lambda_mgd}")
    draw_device = generator.device if generator is not None else device
    u = torch.rand((n, 1, h, w), generator=generator, device=draw_device)
    return (u <= 1.0 - lambda_mgd).to(device=device, dtype=dtype)


def mgd_loss(generated: Tensor, feat_t: Tensor) -> Tensor:
    """Unweighted MGD loss (the teacher is detached).

    L_MGD = (1/N) · Σ_{n,c,i,j} (F^T − G(f_align(F^S) · M))²

    Args:
        generated: [N, C, H, W] output G(·) of the generation block.
        feat_t: [N, C, H, W] teacher map.
    """
    if generated.dim() != 4 or generated.shape != feat_t.shape:
        raise ValueError(
            f"expected two [N, C, H, W] maps of one shape, got {tuple(generated.shape)} and {tuple(feat_t.shape)}"
        )
    return (generated - feat_t.detach()).pow(2).sum() / generated.shape[0]


@dataclass
class MGDParams(MethodParams):
    alpha: float = 2e-5
    lambda_mgd: float = 0.65


class MGDLoss(nn.Module):
    """MGD for one feature level: ``{"mgd": alpha · mgd_loss(G(align(F^S)·M), F^T)}``.

    Args:
        student_channels, teacher_channels: widths (1×1 alignment when they differ).
        alpha: loss weight α (2e-5 in MGD's detection configs).
        lambda_mgd: masked ratio λ (0.65).
        generator: optional ``torch.Generator`` for the random mask
            (reproducible masks in tests); the global RNG when None.

    The generation block is :func:`build_transform` ``("generation", teacher_channels)``
    with PyTorch's default initialisation, as in MGD's code.
    """

    Params = MGDParams
    inputs: tuple[str, ...] = ()

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        alpha: float = MGDParams.alpha,
        lambda_mgd: float = MGDParams.lambda_mgd,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.alpha = check_weight(alpha, "alpha")
        if not 0.0 <= lambda_mgd <= 1.0:
            raise ValueError(f"lambda_mgd must be in [0, 1], got {lambda_mgd}")
        self.lambda_mgd = float(lambda_mgd)
        self.generator = generator
        self.align = build_align(student_channels, teacher_channels)
        self.generation = build_transform("generation", teacher_channels)

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> dict[str, Tensor]:
        """Weighted MGD term."""
        if feat_s.dim() != 4 or feat_t.dim() != 4 or feat_s.shape[-2:] != feat_t.shape[-2:]:
            raise ValueError(
                f"student and teacher maps must share N, H, W: {tuple(feat_s.shape)} vs {tuple(feat_t.shape)}"
            )
        aligned = self.align(feat_s)
        n, _, h, w = aligned.shape
        mask = mgd_random_mask(
            n, h, w, self.lambda_mgd, device=aligned.device, dtype=aligned.dtype, generator=self.generator
        )
        generated = self.generation(aligned * mask)
        return {"mgd": self.alpha * mgd_loss(generated, feat_t)}
