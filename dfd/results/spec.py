"""Table specs: one YAML file per paper table (``experiments/tableN.yaml``).

A spec names the table's metric columns (and the key of each in a run's
``metrics.json``), its descriptive label columns, and its rows grouped as in the
paper. Each row carries the Hydra overrides that produce it and the paper's
numbers. The format, in short::

    number: 5
    title: Using different constraints in different regions
    metrics:                    # column -> metrics.json key, or {key:, decimals:}
      mAP: bbox/AP
    labels: [HD, LD, Schedule]
    groups:
      - name: "RetinaNet RX101 → RetinaNet R50"
        overrides: [teacher=retinanet_x101_64x4d, student=retinanet_r50]
        baseline: mse_mse         # optional: the row the others are compared with (see below)
        rows:
          - id: mse_mse
            labels: {HD: MSE, LD: MSE, Schedule: 1x}
            overrides: [distill=dfd, region=paper, region.hd=mse, region.ld=mse]
            paper: {mAP: 39.7}      # every metric column; null where the paper has none
            note: optional free text

The baseline of a row (what the collector compares it with, :meth:`TableSpec.baseline_of`): its
group's ``baseline:`` if given, else the group's undistilled student (a row with ``distill=none``
that is not a teacher, ``train=teacher``), else the first undistilled student of another group that
trains the same student (the same overrides once those of the teacher and of distillation, ``teacher*``,
``distill*``, ``region*``, ``threshold*``, are left out), else none.

Validation errors are :class:`SpecError` and name the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_DECIMALS",
    "GroupSpec",
    "MetricSpec",
    "RESERVED_COLUMNS",
    "RowSpec",
    "SpecError",
    "TableSpec",
    "default_experiments_dir",
    "load_all_specs",
    "load_spec",
    "spec_path",
]

DEFAULT_DECIMALS = 1
ROW_ID_RE = re.compile(r"^[a-z0-9_]+$")
OVERRIDE_RE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.@/-]*=.+$")
# Column names used by the CSV writer; labels must not take them.
RESERVED_COLUMNS = frozenset({"group", "row_id", "status", "n", "baseline", "detail"})
UNDISTILLED = "distill=none"  # a row with this override (and not TEACHER_ROW) is an undistilled student: a baseline
TEACHER_ROW = "train=teacher"
NOT_THE_STUDENT = ("teacher", "distill", "region", "threshold")  # override keys that do not change an undistilled student


class SpecError(ValueError):
    """A table spec file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class MetricSpec:
    """One reproduced metric column."""

    name: str
    key: str
    decimals: int = DEFAULT_DECIMALS


@dataclass(frozen=True)
class RowSpec:
    """One table row. ``overrides`` is the full list: group's, then the row's own."""

    id: str
    group: str
    labels: dict[str, str]
    overrides: list[str]
    paper: dict[str, float | None]
    own_overrides: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True)
class GroupSpec:
    """A block of rows sharing overrides (typically one teacher/student pair)."""

    name: str
    overrides: list[str]
    rows: list[RowSpec]
    baseline: str | None = None  # the row id given as the group's ``baseline:``, if any


@dataclass(frozen=True)
class TableSpec:
    """A paper table: columns, grouped rows and the paper's numbers."""

    number: int
    title: str
    metrics: dict[str, MetricSpec]
    labels: list[str]
    groups: list[GroupSpec]
    path: Path | None = None

    @property
    def rows(self) -> list[RowSpec]:
        """All rows in table order; each knows its group's name (``row.group``)."""
        return [row for group in self.groups for row in group.rows]

    def row(self, row_id: str) -> RowSpec:
        """The row with id ``row_id`` (KeyError if absent)."""
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(f"table {self.number} has no row {row_id!r}")

    @property
    def name(self) -> str:
        return f"table{self.number}"

    def baseline_of(self, row_id: str) -> str | None:
        """The id of the row ``row_id`` is compared with (see the module's docstring); None when there is none."""
        group = next(g for g in self.groups if any(r.id == row_id for r in g.rows))
        if group.baseline:
            return group.baseline
        own = [r.id for r in group.rows if _undistilled(r)]
        same = [r.id for r in self.rows if _undistilled(r) and _student_setting(r.overrides) == _student_setting(group.overrides)]
        return (own or same or [None])[0]


def _undistilled(row: RowSpec) -> bool:
    return UNDISTILLED in row.overrides and TEACHER_ROW not in row.overrides


def _student_setting(overrides: list[str]) -> set[str]:
    """The overrides that define an undistilled student's run: all but the teacher's and distillation's."""
    return {o for o in overrides if not _override_key(o).startswith(NOT_THE_STUDENT)}


def default_experiments_dir() -> Path:
    """The table specs shipped with the package: ``dfd/experiments`` (in a checkout, a link to ``<repo>/experiments``)."""
    return Path(__file__).resolve().parents[1] / "experiments"


def spec_path(number: int, experiments_dir: str | Path | None = None) -> Path:
    """Path of ``tableN.yaml`` inside ``experiments_dir`` (default: the repo's)."""
    base = Path(experiments_dir) if experiments_dir is not None else default_experiments_dir()
    return base / f"table{number}.yaml"


def load_spec(
    number_or_path: int | str | Path, experiments_dir: str | Path | None = None
) -> TableSpec:
    """Load and validate a table spec by number (``5``, ``"5"``, ``"table5"``) or by path."""
    expected_number: int | None = None
    if isinstance(number_or_path, int) and not isinstance(number_or_path, bool):
        expected_number = number_or_path
    elif isinstance(number_or_path, str) and re.fullmatch(r"(table)?\d+", number_or_path):
        expected_number = int(number_or_path.removeprefix("table"))
    if expected_number is not None:
        path = spec_path(expected_number, experiments_dir)
    else:
        path = Path(number_or_path)
    if not path.is_file():
        raise SpecError(f"{path}: table spec not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {exc}") from exc
    spec = _parse(data, path)
    if expected_number is not None and spec.number != expected_number:
        raise SpecError(f"{path}: 'number' is {spec.number}, expected {expected_number}")
    return spec


def load_all_specs(experiments_dir: str | Path | None = None) -> list[TableSpec]:
    """Every ``tableN.yaml`` of ``experiments_dir`` (default: the repo's), in table order."""
    base = Path(experiments_dir) if experiments_dir is not None else default_experiments_dir()
    paths = [p for p in base.glob("table*.yaml") if re.fullmatch(r"table\d+", p.stem)]
    return [load_spec(int(p.stem[5:]), base) for p in sorted(paths, key=lambda p: int(p.stem[5:]))]


# --------------------------------------------------------------------------- parsing


class _Ctx:
    """Builds error messages that name the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.path}: {key}: {message}")

    def get(self, mapping: dict[str, Any], name: str, key: str, types: type | tuple[type, ...]) -> Any:
        if name not in mapping:
            raise self.error(key or "<top level>", f"missing required key {name!r}")
        value = mapping[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise self.error(f"{key}.{name}" if key else name, f"expected {_type_names(types)}, got {value!r}")
        return value


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _check_keys(ctx: _Ctx, mapping: dict[str, Any], allowed: set[str], key: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ctx.error(key or "<top level>", f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _overrides(ctx: _Ctx, value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.error(key, f"expected a list of 'key=value' strings, got {value!r}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not OVERRIDE_RE.match(item.strip()):
            raise ctx.error(f"{key}[{i}]", f"expected a Hydra override 'key=value', got {item!r}")
        out.append(item.strip())
    return out


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _parse_metrics(ctx: _Ctx, value: Any) -> dict[str, MetricSpec]:
    if not isinstance(value, dict) or not value:
        raise ctx.error("metrics", "expected a non-empty mapping column -> metrics.json key")
    metrics: dict[str, MetricSpec] = {}
    for name, item in value.items():
        key = f"metrics.{name}"
        if not isinstance(name, str) or not name.strip():
            raise ctx.error(key, "metric column names must be non-empty strings")
        if isinstance(item, str):
            metrics[name] = MetricSpec(name=name, key=item)
        elif isinstance(item, dict):
            _check_keys(ctx, item, {"key", "decimals"}, key)
            metric_key = ctx.get(item, "key", key, str)
            decimals = item.get("decimals", DEFAULT_DECIMALS)
            if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 6:
                raise ctx.error(f"{key}.decimals", f"expected an integer 0..6, got {decimals!r}")
            metrics[name] = MetricSpec(name=name, key=metric_key, decimals=decimals)
        else:
            raise ctx.error(key, f"expected a metrics.json key or {{key:, decimals:}}, got {item!r}")
    return metrics


def _parse(data: Any, path: Path) -> TableSpec:
    ctx = _Ctx(path)
    if not isinstance(data, dict):
        raise ctx.error("<top level>", "expected a mapping")
    _check_keys(ctx, data, {"number", "title", "metrics", "labels", "groups"}, "")
    number = ctx.get(data, "number", "", int)
    title = ctx.get(data, "title", "", str)
    if "metrics" not in data:
        raise ctx.error("<top level>", "missing required key 'metrics'")
    metrics = _parse_metrics(ctx, data["metrics"])

    labels = data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ctx.error("labels", f"expected a list of column names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ctx.error("labels", f"duplicate label columns in {labels}")
    for label in labels:
        if label in RESERVED_COLUMNS or label in metrics:
            raise ctx.error("labels", f"label column {label!r} clashes with a reserved or metric column")

    raw_groups = ctx.get(data, "groups", "", list)
    if not raw_groups:
        raise ctx.error("groups", "a table needs at least one group")
    seen_ids: dict[str, str] = {}
    groups: list[GroupSpec] = []
    for gi, raw_group in enumerate(raw_groups):
        gkey = f"groups[{gi}]"
        if not isinstance(raw_group, dict):
            raise ctx.error(gkey, "expected a mapping")
        _check_keys(ctx, raw_group, {"name", "overrides", "rows", "baseline"}, gkey)
        gname = ctx.get(raw_group, "name", gkey, str)
        goverrides = _overrides(ctx, raw_group.get("overrides"), f"{gkey}.overrides")
        raw_rows = ctx.get(raw_group, "rows", gkey, list)
        if not raw_rows:
            raise ctx.error(f"{gkey}.rows", "a group needs at least one row")
        rows: list[RowSpec] = []
        for ri, raw_row in enumerate(raw_rows):
            rkey = f"{gkey}.rows[{ri}]"
            if not isinstance(raw_row, dict):
                raise ctx.error(rkey, "expected a mapping")
            rows.append(_parse_row(ctx, raw_row, rkey, gname, goverrides, metrics, labels, seen_ids))
        baseline = raw_group.get("baseline")
        if baseline is not None and not isinstance(baseline, str):
            raise ctx.error(f"{gkey}.baseline", f"expected a row id, got {baseline!r}")
        groups.append(GroupSpec(name=gname, overrides=goverrides, rows=rows, baseline=baseline))
    for gi, group in enumerate(groups):
        if group.baseline is not None and group.baseline not in seen_ids:
            raise ctx.error(f"groups[{gi}].baseline", f"{group.baseline!r} is not a row id of this table ({sorted(seen_ids)})")
    return TableSpec(number=number, title=title, metrics=metrics, labels=labels, groups=groups, path=path)


def _row_labels(ctx: _Ctx, raw: dict[str, Any], rkey: str, labels: list[str]) -> dict[str, str]:
    """A row's label values, one per declared column (blank: '')."""
    raw_labels = raw.get("labels") or {}
    if not isinstance(raw_labels, dict):
        raise ctx.error(f"{rkey}.labels", f"expected a mapping, got {raw_labels!r}")
    unknown = sorted(set(raw_labels) - set(labels))
    if unknown:
        raise ctx.error(f"{rkey}.labels", f"unknown label column(s) {unknown}; declared: {labels}")
    missing = [name for name in labels if name not in raw_labels]
    if missing:
        raise ctx.error(f"{rkey}.labels", f"missing label column(s) {missing} (use '' for blank)")
    row_labels: dict[str, str] = {}
    for name in labels:
        value = raw_labels[name]
        if isinstance(value, (dict, list)):
            raise ctx.error(f"{rkey}.labels.{name}", f"expected a scalar, got {value!r}")
        row_labels[name] = "" if value is None else str(value)
    return row_labels


def _row_paper(ctx: _Ctx, raw: dict[str, Any], rkey: str, metrics: dict[str, MetricSpec]) -> dict[str, float | None]:
    """A row's paper numbers, one per declared metric (null where the paper has none)."""
    raw_paper = ctx.get(raw, "paper", rkey, dict)
    unknown = sorted(set(raw_paper) - set(metrics))
    if unknown:
        raise ctx.error(f"{rkey}.paper", f"unknown metric column(s) {unknown}; declared: {list(metrics)}")
    missing = [name for name in metrics if name not in raw_paper]
    if missing:
        raise ctx.error(
            f"{rkey}.paper", f"missing metric column(s) {missing} (use null where the paper has none)"
        )
    paper: dict[str, float | None] = {}
    for name in metrics:
        value = raw_paper[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ctx.error(f"{rkey}.paper.{name}", f"expected a number or null, got {value!r}")
        paper[name] = None if value is None else float(value)
    return paper


def _parse_row(
    ctx: _Ctx,
    raw: dict[str, Any],
    rkey: str,
    group: str,
    group_overrides: list[str],
    metrics: dict[str, MetricSpec],
    labels: list[str],
    seen_ids: dict[str, str],
) -> RowSpec:
    _check_keys(ctx, raw, {"id", "labels", "overrides", "paper", "note"}, rkey)
    row_id = ctx.get(raw, "id", rkey, str)
    if not ROW_ID_RE.match(row_id):
        raise ctx.error(f"{rkey}.id", f"row id {row_id!r} must match [a-z0-9_]+")
    if row_id in seen_ids:
        raise ctx.error(f"{rkey}.id", f"duplicate row id {row_id!r} (first at {seen_ids[row_id]})")
    seen_ids[row_id] = rkey
    rkey = f"{rkey} ({row_id})"

    row_labels = _row_labels(ctx, raw, rkey, labels)

    own = _overrides(ctx, raw.get("overrides"), f"{rkey}.overrides")
    full = group_overrides + own
    seen_keys: set[str] = set()
    for override in full:
        okey = _override_key(override)
        if okey in seen_keys:
            raise ctx.error(f"{rkey}.overrides", f"{okey!r} is set twice (group and row overrides: {full})")
        seen_keys.add(okey)

    paper = _row_paper(ctx, raw, rkey, metrics)

    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise ctx.error(f"{rkey}.note", f"expected a string, got {note!r}")
    return RowSpec(
        id=row_id,
        group=group,
        labels=row_labels,
        overrides=full,
        paper=paper,
        own_overrides=own,
        note=note,
    )
