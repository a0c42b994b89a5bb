"""Errors shared by every layer of the package (it imports nothing else of ``dfd``)."""
from __future__ import annotations


class ComponentNotImplemented(NotImplementedError):
    """A config names a component (model family, dataset, evaluator, ...) this repository does not have yet."""
