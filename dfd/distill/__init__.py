"""The method library: tensors in, losses out.

Knows nothing of detectors, data, Hydra or W&B; imports nothing else of ``dfd``.
"""
from .attention import channel_attention, spatial_attention
from .combine import METHODS, FeatureDistillation, build_loss
from .constraint import CONSTRAINTS, masked_squared_error
from .cwd import CWDLoss, cwd_loss
from .dfd import DEFAULT_ALPHA, DEFAULT_BETA, DFDLoss
from .disparity import disparity_map
from .fgd import FGDLoss, fgd_masks
from .mgd import MGDLoss
from .mse import FeatureMSELoss
from .pkd import PKDLoss, pkd_loss
from .region import region_mask
from .threshold import THRESHOLD_KINDS, parse_threshold, threshold_value
from .transform import TRANSFORM_STRUCTURES, build_align, build_transform

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "METHODS",
    "THRESHOLD_KINDS",
    "TRANSFORM_STRUCTURES",
    "CWDLoss",
    "DFDLoss",
    "FGDLoss",
    "FeatureDistillation",
    "FeatureMSELoss",
    "MGDLoss",
    "PKDLoss",
    "build_align",
    "build_loss",
    "build_transform",
    "channel_attention",
    "cwd_loss",
    "disparity_map",
    "fgd_masks",
    "masked_squared_error",
    "parse_threshold",
    "pkd_loss",
    "region_mask",
    "spatial_attention",
    "threshold_value",
]
