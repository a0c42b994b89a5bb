"""The transformation module f_trans and the 1×1 channel alignment.

The paper shows f_trans only as a picture (Fig. 3a); its structure is a choice
(``structure``), documented in docs/choices.md. The default, ``"generation"``, is
MGD's generation block: conv3×3 → ReLU → conv3×3 at the teacher's width.
"""
from __future__ import annotations

from torch import nn

TRANSFORM_STRUCTURES = ("generation", "conv1x1", "conv3x3", "mlp")


def build_transform(structure: str, channels: int) -> nn.Module:
    """Build f_trans operating at ``channels`` (the teacher's width).

    Structures:
        generation: conv3×3 → ReLU → conv3×3 (MGD's generation block; default)
        conv1x1:    a single 1×1 conv (a per-position linear map)
        conv3x3:    a single 3×3 conv
        mlp:        conv1×1 → ReLU → conv1×1 (per-position, no spatial context)
    """
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    c = channels
    if structure == "generation":
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))
    if structure == "conv1x1":
        return nn.Conv2d(c, c, 1)
    if structure == "conv3x3":
        return nn.Conv2d(c, c, 3, padding=1)
    if structure == "mlp":
        return nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1))
    raise ValueError(f"unknown transform structure {structure!r}; expected one of {', '.join(TRANSFORM_STRUCTURES)}")


def build_align(student_channels: int, teacher_channels: int) -> nn.Module:
    """1×1 conv mapping the student's width to the teacher's; identity when they match."""
    if student_channels <= 0 or teacher_channels <= 0:
        raise ValueError(f"channel counts must be positive, got student={student_channels}, teacher={teacher_channels}")
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, 1)
