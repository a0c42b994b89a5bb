"""Argument checks shared by the losses: errors name the argument at fault."""
from __future__ import annotations


def check_weight(value: float, key: str) -> float:
    """A loss weight: a non-negative number (returned as float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)
