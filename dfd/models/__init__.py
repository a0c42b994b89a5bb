"""Model families (plug-ins), their backbones, and loading weights.

Importing this package imports every module of it, so each family module registers its family in
:data:`FAMILIES`: adding a family is adding a module (docs/adding-a-model.md).
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from .backbones import BACKBONES, NORMS, build_backbone
from .errors import ComponentNotImplemented, WeightsError
from .family import (
    FAMILIES,
    Batch,
    Family,
    InputSpec,
    ModelOptions,
    OptionError,
    StepOutput,
    TaskModel,
    arch_options,
    freeze,
    get_family,
    options_from_dict,
    prepare_batch,
    register_family,
    select_maps,
    without_pretrained,
)
from .weights import fit_state_dict, inherit_matching, load_weights, read_checkpoint, state_dict_of

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_model(options, num_classes: int, key: str = "model") -> nn.Module:
    """The model ``options`` describe (``options.family`` picks the family), with ``options.weights`` loaded.

    ``key`` (``teacher`` / ``student``) names the config node in errors.
    """
    family = get_family(options.family, key)
    try:
        model = family.build(options, num_classes)
    except (OSError, RuntimeError) as err:  # e.g. pretrained trunk weights that cannot be downloaded here
        raise WeightsError(f"{key}: building {options.family} failed while fetching pretrained weights: {err}") from err
    if options.weights:
        load_weights(model, options.weights, f"{key}.weights")
    return model


__all__ = [
    "BACKBONES",
    "FAMILIES",
    "NORMS",
    "Batch",
    "ComponentNotImplemented",
    "Family",
    "InputSpec",
    "ModelOptions",
    "OptionError",
    "StepOutput",
    "TaskModel",
    "WeightsError",
    "arch_options",
    "build_backbone",
    "build_model",
    "fit_state_dict",
    "freeze",
    "get_family",
    "inherit_matching",
    "load_weights",
    "options_from_dict",
    "prepare_batch",
    "read_checkpoint",
    "register_family",
    "select_maps",
    "state_dict_of",
    "without_pretrained",
]
