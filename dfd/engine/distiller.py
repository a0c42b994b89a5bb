"""The Distiller: joins the student, the frozen teacher, the feature taps and the distillation losses."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dfd.distill import FeatureDistillation
from dfd.models import FeatureTaps, freeze, teacher_features


class Distiller(nn.Module):
    """``forward(images, targets)`` returns the student's task losses plus ``distill/<method>/<term>``.

    Without a teacher (``distill=none`` or a teacher run) it is the detector alone. The
    teacher is frozen and stays in eval mode; it runs without autograd on exactly the
    batched input the student saw (captured from the student's transform).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        losses: FeatureDistillation | None = None,
        levels: Sequence[str] = (),
        feature_module: str = "backbone",
    ) -> None:
        super().__init__()
        if (teacher is None) != (losses is None):
            raise ValueError("a teacher and distillation losses go together")
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.losses = losses
        self.feature_module = feature_module
        self.levels = list(levels)
        self.taps = FeatureTaps(student, self.levels, feature_module) if teacher is not None else None

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer sees: the student and the distillation modules (f_trans, alignments)."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.losses is not None:
            params += [p for p in self.losses.parameters() if p.requires_grad]
        return params

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        task = self.student(images, targets)
        if self.teacher is None:
            return task
        batch = self.taps.images.tensors
        feats_t = teacher_features(self.teacher, batch, self.levels, self.feature_module)
        boxes = sizes = None
        if self.losses.needs_boxes:
            boxes = [t["boxes"] for t in self.taps.targets]
            sizes = [tuple(batch.shape[-2:])] * batch.shape[0]
        terms = self.losses(self.taps.features, feats_t, boxes=boxes, image_sizes=sizes)
        return {**task, **{f"distill/{k}": v for k, v in terms.items()}}


@torch.no_grad()
def probe_channels(student: nn.Module, teacher: nn.Module, levels: Sequence[str], feature_module: str = "backbone", size: int = 64) -> dict[str, tuple[int, int]]:
    """Run both feature modules on a small zero input and read each level's width."""
    x = torch.zeros(1, 3, size, size, device=next(student.parameters()).device)
    was_training = student.training
    student.eval()
    fs = student.get_submodule(feature_module)(x)
    student.train(was_training)
    ft = teacher.get_submodule(feature_module)(x.to(next(teacher.parameters()).device))
    missing = [lvl for lvl in levels if lvl not in fs or lvl not in ft]
    if missing:
        raise KeyError(f"distill.levels {missing} are not produced by both models (student has {list(fs)}, teacher {list(ft)})")
    return {lvl: (fs[lvl].shape[1], ft[lvl].shape[1]) for lvl in levels}
