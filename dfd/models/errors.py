"""Errors raised while building models."""
from __future__ import annotations

from dfd.errors import ComponentNotImplemented


class WeightsError(ValueError):
    """Weights or a checkpoint could not be found, read, or fitted to a model."""


__all__ = ["ComponentNotImplemented", "WeightsError"]
