"""Reading finished runs and building the paper's tables (never trains).

Reads run directories only: nothing here imports ``dfd.engine``, ``dfd.models``
or ``dfd.distill``.

>>> from dfd.results import load_spec, collect_table, to_markdown
>>> table = collect_table(load_spec(5), runs_root="runs", scale="smoke", seeds=[0])
>>> print(to_markdown(table))  # doctest: +SKIP
"""

from __future__ import annotations

from .formats import latex_escape, log_wandb, output_stem, records, summary_lines, to_csv, to_latex, to_markdown, write_tables
from .runs import SCALES, RowRuns, SeedResult, read_row, read_seed, row_dir, seed_dir
from .spec import GroupSpec, MetricSpec, RowSpec, SpecError, TableSpec, load_spec, spec_path
from .tables import Cell, CollectedRow, CollectedTable, collect_table

__all__ = [
    "SCALES",
    "Cell",
    "CollectedRow",
    "CollectedTable",
    "GroupSpec",
    "MetricSpec",
    "RowRuns",
    "RowSpec",
    "SeedResult",
    "SpecError",
    "TableSpec",
    "collect_table",
    "latex_escape",
    "load_spec",
    "log_wandb",
    "output_stem",
    "read_row",
    "read_seed",
    "records",
    "row_dir",
    "seed_dir",
    "spec_path",
    "summary_lines",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_tables",
]
