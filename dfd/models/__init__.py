"""Teacher and student builders and the taps that name the distilled features."""
from __future__ import annotations

from typing import Any

from torch import nn

from .backbones import BACKBONES, NORMS, build_backbone
from .errors import ComponentNotImplemented, WeightsError
from .retinanet import RETINANET_LEVELS, build_retinanet
from .taps import FEATURE_MODULES, FeatureTaps, freeze, select_levels, teacher_features
from .weights import fit_state_dict, inherit_matching, load_weights, read_checkpoint, state_dict_of

DETECTORS = {"retinanet": build_retinanet}
DETECTOR_LEVELS = {"retinanet": RETINANET_LEVELS}


def build_detector(detector: str, backbone: str, num_classes: int, key: str = "model", **kwargs: Any) -> nn.Module:
    """Build a detector by name; names of detectors not built yet raise ComponentNotImplemented."""
    if detector not in DETECTORS:
        raise ComponentNotImplemented(
            f"{key}.detector={detector!r} is not implemented (available: {', '.join(DETECTORS)})"
        )
    return DETECTORS[detector](backbone, num_classes, **kwargs)


__all__ = [
    "BACKBONES",
    "DETECTORS",
    "DETECTOR_LEVELS",
    "FEATURE_MODULES",
    "NORMS",
    "RETINANET_LEVELS",
    "ComponentNotImplemented",
    "FeatureTaps",
    "WeightsError",
    "build_backbone",
    "build_detector",
    "build_retinanet",
    "fit_state_dict",
    "freeze",
    "inherit_matching",
    "load_weights",
    "read_checkpoint",
    "select_levels",
    "state_dict_of",
    "teacher_features",
]
