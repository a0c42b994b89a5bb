"""What the distillation losses are given: one typed context per step.

A loss class declares the extra inputs it needs in ``inputs`` (a tuple of field names of
:class:`DistillContext`); a caller fills only the fields some loss needs
(:attr:`dfd.distill.FeatureDistillation.inputs`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, List, Optional

from torch import Tensor

# The optional inputs a loss may declare, with what they hold.
CONTEXT_INPUTS = {
    "boxes": "ground-truth boxes, one [K, 4] (x1, y1, x2, y2) tensor per image, in the pixels of the batched input",
    "image_sizes": "each image's unpadded (h, w) inside the padded batch",
}


@dataclass
class DistillContext:
    """The inputs of one distillation step.

    student, teacher: maps by name: feature maps (``p3``, ...) and, where a model family exposes
        them, logits (dense predictions such as a segmentation head's ``logits``). Teacher maps are
        targets; losses detach them.
    boxes, image_sizes: see :data:`CONTEXT_INPUTS`; None when no loss asked for them.
    """

    student: Mapping[str, Tensor]
    teacher: Mapping[str, Tensor]
    boxes: Optional[list[Tensor]] = None
    image_sizes: Optional[list[tuple[int, int]]] = None

    def inputs_for(self, names: tuple[str, ...], method: str) -> dict[str, Any]:
        """The declared inputs ``names`` of ``method`` as keyword arguments; a missing one is an error naming both."""
        out = {}
        for name in names:
            value = getattr(self, name, None)
            if value is None:
                raise ValueError(f"distillation method {method!r} needs {name!r} ({CONTEXT_INPUTS.get(name, '?')}), "
                                 "which the caller did not put in the DistillContext")
            out[name] = value
        return out


@dataclass
class MethodParams:
    """What every method's parameters share. Each loss has a subclass (``<Loss>.Params``) beside it.

    levels: the maps this method distils; None means every level the run distils (``distill.levels``).
    """

    levels: Optional[List[str]] = None
