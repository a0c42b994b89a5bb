"""Table rows as Hydra configs: each row of a table spec becomes ``+row=table<N>_<row id>``.

A row's overrides (``distill=dfd``, ``region.hd=mse``, ...) are turned into a config
node whose defaults list overrides the named groups and whose values set the rest,
so a table is one Hydra multirun over its rows and nothing is written twice.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from .config import CONF_DIR


class RowLike(Protocol):
    id: str
    overrides: Sequence[str]


class TableLike(Protocol):
    number: int
    rows: Iterable[RowLike]


def row_name(table: int, row: str) -> str:
    return f"table{table}_{row}"


def _groups(conf_dir: Path) -> set[str]:
    return {p.name for p in conf_dir.iterdir() if p.is_dir()}


def row_node(table: int, row: str, overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The config node of one row: group choices in its defaults list, values below."""
    groups = _groups(conf_dir)
    defaults: list[Any] = []
    node: dict[str, Any] = {}
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if ov.is_add() or ov.is_delete() or ov.is_sweep_override():
            raise ValueError(f"table {table}, row {row!r}: override {ov.input_line!r} must be a plain key=value")
        if key in groups:
            defaults.append({f"override /{key}": ov.value()})
            continue
        *parents, leaf = key.split(".")
        cursor = node
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = ov.value()
    node.setdefault("experiment", {}).update(table=table, row=row)
    return {"defaults": [*defaults, "_self_"], **node}


def register_rows(tables: Iterable[TableLike], conf_dir: Path = CONF_DIR) -> list[str]:
    """Store every row of ``tables`` in Hydra's ConfigStore (group ``row``); return their names."""
    cs = ConfigStore.instance()
    names = []
    for table in tables:
        for row in table.rows:
            name = row_name(table.number, row.id)
            cs.store(group="row", name=name, node=row_node(table.number, row.id, row.overrides, conf_dir), package="_global_")
            names.append(name)
    return names
