"""Errors raised while building models."""
from __future__ import annotations


class ComponentNotImplemented(NotImplementedError):
    """A config names a component (detector, dataset, ...) this repository does not have yet."""


class WeightsError(ValueError):
    """Weights or a checkpoint could not be found, read, or fitted to a model."""
