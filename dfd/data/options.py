"""A pipeline's options node (``data.yolo``, ``data.keypoints``, ``data.segmentation``) as its dataclass."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .coco import DataError

T = TypeVar("T")


def parse_options(values: Mapping[str, Any] | T | None, cls: type[T], key: str) -> T:
    """``values`` (a mapping of plain values, an instance of ``cls``, or None for the defaults) as ``cls``; fields
    that are dataclasses themselves are built from their mappings the same way. Unknown keys are a DataError
    naming ``key`` and the allowed ones. Range checks stay with each options class."""
    if isinstance(values, cls):
        return values
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    for name in names:
        if not dataclasses.is_dataclass(hints[name]) or name not in values:
            continue
        if values[name] is None:  # a null node: its defaults
            del values[name]
        elif isinstance(values[name], Mapping):
            values[name] = parse_options(values[name], hints[name], f"{key}.{name}")
    return cls(**values)
