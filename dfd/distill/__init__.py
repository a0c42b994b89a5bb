"""The method library: tensors in, losses out.

Knows nothing of detectors, data, Hydra or W&B; imports nothing else of ``dfd``.
Each method is a per-level loss module with its parameters as a dataclass beside it
(``<Loss>.Params``); :class:`FeatureDistillation` runs several methods over several maps
from one :class:`DistillContext`.
"""
from .attention import channel_attention, spatial_attention
from .combine import METHODS, FeatureDistillation, build_loss
from .constraint import CONSTRAINTS, masked_squared_error
from .context import CONTEXT_INPUTS, DistillContext, MethodParams
from .cwd import CWDLoss, CWDParams, cwd_loss
from .dfd import DEFAULT_ALPHA, DEFAULT_BETA, DFDLoss, DFDParams, RegionParams
from .disparity import disparity_map
from .fgd import FGDLoss, FGDParams, fgd_masks
from .mgd import MGDLoss, MGDParams
from .mse import FeatureMSELoss, MSEParams
from .pkd import PKDLoss, PKDParams, pkd_loss
from .region import region_mask
from .threshold import THRESHOLD_KINDS, Threshold, parse_threshold, threshold_value
from .transform import TRANSFORM_STRUCTURES, build_align, build_transform

__all__ = [
    "CONSTRAINTS",
    "CONTEXT_INPUTS",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "METHODS",
    "THRESHOLD_KINDS",
    "TRANSFORM_STRUCTURES",
    "CWDLoss",
    "CWDParams",
    "DFDLoss",
    "DFDParams",
    "DistillContext",
    "FGDLoss",
    "FGDParams",
    "FeatureDistillation",
    "FeatureMSELoss",
    "MGDLoss",
    "MGDParams",
    "MSEParams",
    "MethodParams",
    "PKDLoss",
    "PKDParams",
    "RegionParams",
    "Threshold",
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
