"""Feature taps: the outputs of named modules of a detector, recorded during its forward pass."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Where each detector's distillable features come from: (module name, levels it returns).
FEATURE_MODULES: dict[str, str] = {"retinanet": "backbone"}


class FeatureTaps:
    """Records the transformed input and the named feature levels of a detector's forward pass.

    ``model.transform`` yields the batched input (``images``: an ImageList, and the
    ``targets`` resized with it); ``model.<feature module>`` yields a dict of levels, of
    which ``levels`` are kept in ``features``.
    """

    def __init__(self, model: nn.Module, levels: Sequence[str], feature_module: str = "backbone") -> None:
        self.levels = list(levels)
        self.images = None
        self.targets: list[dict[str, Tensor]] | None = None
        self.features: dict[str, Tensor] = {}
        module = model.get_submodule(feature_module)
        self._handles = [
            model.transform.register_forward_hook(self._on_transform),
            module.register_forward_hook(self._on_features),
        ]

    def _on_transform(self, _m: nn.Module, _inp: object, out: tuple) -> None:
        self.images, self.targets = out

    def _on_features(self, _m: nn.Module, _inp: object, out: dict[str, Tensor]) -> None:
        self.features = select_levels(out, self.levels)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def select_levels(features: dict[str, Tensor], levels: Sequence[str]) -> dict[str, Tensor]:
    """Pick ``levels`` from a feature dict, with an error naming the unknown ones."""
    unknown = [lvl for lvl in levels if lvl not in features]
    if unknown:
        raise KeyError(f"feature levels {unknown} not produced by the model (it has {list(features)})")
    return {lvl: features[lvl] for lvl in levels}


@torch.no_grad()
def teacher_features(teacher: nn.Module, tensors: Tensor, levels: Sequence[str], feature_module: str = "backbone") -> dict[str, Tensor]:
    """Run only the teacher's feature module on an already batched, normalised input."""
    return select_levels(teacher.get_submodule(feature_module)(tensors), levels)


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: eval, no parameter requires grad."""
    model.eval()
    model.requires_grad_(False)
    return model
