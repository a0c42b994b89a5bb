"""The Distiller: joins the student, the frozen teacher and the distillation losses."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dfd.distill import DistillContext, FeatureDistillation
from dfd.models import Batch, freeze, select_maps


class Distiller(nn.Module):
    """``forward(batch)`` returns the student's task losses plus ``distill/<method>/<term>``.

    Without a teacher (``distill=none`` or a teacher run) it is the model alone. The teacher
    is frozen and stays in eval mode; it sees exactly the batch the student saw and is asked
    only for the maps the losses use. The losses get a :class:`DistillContext` holding only
    the inputs they declare.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, losses: FeatureDistillation | None = None) -> None:
        super().__init__()
        if (teacher is None) != (losses is None):
            raise ValueError("a teacher and distillation losses go together")
        if teacher is not None and not student.input_spec.serves(teacher.input_spec):
            raise ValueError(f"the teacher wants its input as {teacher.input_spec}, the student's batches are "
                             f"{student.input_spec}: they cannot share a batch")
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.losses = losses

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def prepare(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], device: torch.device) -> Batch:
        """A batch as the student prepares it (the teacher accepts it: checked at construction)."""
        return self.student.prepare(images, targets, device)

    def trainable_modules(self) -> list[nn.Module]:
        """What the optimizer trains: the student and the distillation modules (f_trans, alignments)."""
        return [self.student] + ([self.losses] if self.losses is not None else [])

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        out = self.student.train_step(batch)
        if self.teacher is None:
            return out.losses
        levels = self.losses.levels
        with torch.no_grad():
            maps_t = self.teacher.distill_maps(batch, levels)
        need = self.losses.inputs
        ctx = DistillContext(
            select_maps(out.maps, levels), maps_t,
            boxes=[t["boxes"] for t in batch.targets] if "boxes" in need else None,
            image_sizes=batch.image_sizes if "image_sizes" in need else None,
        )
        return {**out.losses, **{f"distill/{k}": v for k, v in self.losses(ctx).items()}}


@torch.no_grad()
def probe_channels(student: nn.Module, teacher: nn.Module, levels: Sequence[str], device: torch.device, size: int = 64) -> dict[str, tuple[int, int]]:
    """Each level's width in the student and the teacher, read from one small blank input."""
    batch = student.prepare([torch.zeros(3, size, size)], [{}], device)
    modes = [(model, model.training) for model in (student, teacher)]
    student.eval()
    teacher.eval()  # in training mode, a blank image would move the BatchNorm statistics of a teacher not frozen yet
    try:
        fs = student.distill_maps(batch, levels)
        ft = teacher.distill_maps(batch, levels)
    finally:
        for model, mode in modes:
            model.train(mode)
    return {lvl: (int(fs[lvl].shape[1]), int(ft[lvl].shape[1])) for lvl in levels}
