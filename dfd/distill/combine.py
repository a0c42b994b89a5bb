"""Several distillation methods over several feature levels, as one module.

A combination such as "mgd+dfd" is the sum of each method's (already weighted)
terms; every term keeps its own name, ``"<method>/<term>"``, summed over levels.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .cwd import CWDLoss
from .dfd import DFDLoss
from .fgd import FGDLoss
from .mgd import MGDLoss
from .mse import FeatureMSELoss
from .pkd import PKDLoss

METHODS: dict[str, type[nn.Module]] = {
    "dfd": DFDLoss,
    "mse": FeatureMSELoss,
    "fgd": FGDLoss,
    "mgd": MGDLoss,
    "pkd": PKDLoss,
    "cwd": CWDLoss,
}


def build_loss(method: str, student_channels: int, teacher_channels: int, **params: Any) -> nn.Module:
    """One method's loss module for one level; ``params`` are the method's keywords."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        return METHODS[method](student_channels, teacher_channels, **params)
    except TypeError as err:
        raise ValueError(f"bad parameters for method {method!r}: {err}") from err


class FeatureDistillation(nn.Module):
    """Per-level losses of one or more methods.

    Args:
        methods: ``{method: keyword parameters}``, e.g. ``{"dfd": {"hd": "tf"}, "mgd": {}}``.
        channels: ``{level: (student_channels, teacher_channels)}`` for each distilled level.

    ``forward(feats_s, feats_t, boxes=None, image_sizes=None)`` takes dicts of
    [N, C, H, W] maps keyed by level and returns ``{"<method>/<term>": loss}``.
    """

    def __init__(self, methods: Mapping[str, Mapping[str, Any]], channels: Mapping[str, tuple[int, int]]) -> None:
        super().__init__()
        if not channels:
            raise ValueError("no feature levels to distill")
        self.levels = list(channels)
        self.losses = nn.ModuleDict(
            {
                method: nn.ModuleDict({lvl: build_loss(method, cs, ct, **dict(params)) for lvl, (cs, ct) in channels.items()})
                for method, params in methods.items()
            }
        )

    @property
    def needs_boxes(self) -> bool:
        return any(getattr(m, "needs_boxes", False) for per_level in self.losses.values() for m in per_level.values())

    def forward(
        self,
        feats_s: Mapping[str, Tensor],
        feats_t: Mapping[str, Tensor],
        boxes: list[Tensor] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for method, per_level in self.losses.items():
            for level, loss in per_level.items():
                if getattr(loss, "needs_boxes", False):
                    out = loss(feats_s[level], feats_t[level], boxes=boxes, image_sizes=image_sizes)
                else:
                    out = loss(feats_s[level], feats_t[level])
                for name, value in out.items():
                    key = f"{method}/{name}"
                    terms[key] = terms[key] + value if key in terms else value
        return terms
