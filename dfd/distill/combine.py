"""Several distillation methods over several maps, as one module.

A combination such as "mgd+dfd" is the sum of each method's (already weighted)
terms; every term keeps its own name, ``"<method>/<term>"``, summed over levels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .context import DistillContext, MethodParams
from .cwd import CWDLoss
from .dfd import DFDLoss
from .fgd import FGDLoss
from .mgd import MGDLoss
from .mse import FeatureMSELoss
from .pkd import PKDLoss

# Every method: its per-level loss class; ``cls.Params`` is its parameter dataclass and
# ``cls.inputs`` the context fields it needs besides the two maps.
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


def _keywords(params: MethodParams | Mapping[str, Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(params):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return dict(params)


class FeatureDistillation(nn.Module):
    """Per-level losses of one or more methods.

    Args:
        methods: ``{method: parameters}``, each a ``<Loss>.Params`` dataclass or a dict of the
            loss's keywords, e.g. ``{"dfd": {"hd": "tf"}, "mgd": {}}``. A ``levels`` entry picks the
            maps that method distils (default: every level of ``channels``).
        channels: ``{level: (student_channels, teacher_channels)}`` for every distilled map.

    ``forward(ctx)`` takes a :class:`DistillContext` and returns ``{"<method>/<term>": loss}``, each
    method's terms times its gain (:attr:`gains`, 1 unless :meth:`set_gains` changed it; saved with the
    module's state, so a resumed run keeps the gains it started with). :attr:`inputs` names the context
    fields the losses need besides the maps.
    """

    def __init__(self, methods: Mapping[str, MethodParams | Mapping[str, Any]], channels: Mapping[str, tuple[int, int]]) -> None:
        super().__init__()
        if not channels:
            raise ValueError("no feature levels to distill")
        self.losses = nn.ModuleDict()
        for method, params in methods.items():
            kw = _keywords(params)
            levels = kw.pop("levels", None) or list(channels)
            unknown = [lvl for lvl in levels if lvl not in channels]
            if unknown:
                raise ValueError(f"distillation method {method!r}: levels {unknown} have no channels (known: {list(channels)})")
            self.losses[method] = nn.ModuleDict({lvl: build_loss(method, *channels[lvl], **kw) for lvl in levels})
        self.register_buffer("gains", torch.ones(len(self.losses)))

    def set_gains(self, gains: Mapping[str, float]) -> None:
        """Multiply every term of method ``m`` by ``gains[m]`` from now on (methods not named keep theirs)."""
        unknown = [m for m in gains if m not in self.losses]
        if unknown:
            raise ValueError(f"no distillation method {unknown} here (methods: {list(self.losses)})")
        for i, method in enumerate(self.losses):
            if method in gains:
                self.gains[i] = float(gains[method])

    def gain_of(self, method: str) -> float:
        return float(self.gains[list(self.losses).index(method)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # checkpoints written before the gains existed hold none: their terms were weighted as configured
        state_dict.setdefault(prefix + "gains", torch.ones_like(self.gains))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def levels(self) -> list[str]:
        """Every map some method distils, in first-use order."""
        return list(dict.fromkeys(lvl for per_level in self.losses.values() for lvl in per_level))

    @property
    def inputs(self) -> frozenset[str]:
        """The context fields (besides the maps) some loss needs."""
        return frozenset(name for method in self.losses for name in METHODS[method].inputs)

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for i, (method, per_level) in enumerate(self.losses.items()):
            extra = ctx.inputs_for(METHODS[method].inputs, method)
            gain = self.gains[i]
            for level, loss in per_level.items():
                for name, value in loss(ctx.student[level], ctx.teacher[level], **extra).items():
                    key = f"{method}/{name}"
                    value = value * gain
                    terms[key] = terms[key] + value if key in terms else value
        return terms
