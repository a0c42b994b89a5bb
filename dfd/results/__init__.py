"""Reading finished runs and building the paper's tables (never trains).

Reads run directories only: nothing here imports ``dfd.engine``, ``dfd.models``
or ``dfd.distill``.

>>> from dfd.results import load_spec, collect_table, to_markdown
>>> table = collect_table(load_spec(5), runs_root="runs", scale="smoke", seeds=[0])
>>> print(to_markdown(table))  # doctest: +SKIP
"""

from __future__ import annotations

from .formats import (
    BASELINE_RULE,
    latex_escape,
    log_wandb,
    metric_column,
    output_stem,
    records,
    results_dir,
    summary_lines,
    to_csv,
    to_latex,
    to_markdown,
    uncommitted_refusal,
    write_tables,
)
from .runs import SCALES, RowRuns, SeedResult, read_row, read_seed, row_dir, seed_dir
from .spec import GroupSpec, MetricSpec, RowSpec, SpecError, TableSpec, load_spec, spec_path
from .tables import Cell, CollectedRow, CollectedTable, Comparison, code_text, collect_table, compare

__all__ = [
    "BASELINE_RULE",
    "SCALES",
    "Cell",
    "CollectedRow",
    "CollectedTable",
    "Comparison",
    "GroupSpec",
    "MetricSpec",
    "RowRuns",
    "RowSpec",
    "SeedResult",
    "SpecError",
    "TableSpec",
    "code_text",
    "collect_table",
    "compare",
    "latex_escape",
    "load_spec",
    "log_wandb",
    "metric_column",
    "output_stem",
    "read_row",
    "read_seed",
    "records",
    "results_dir",
    "row_dir",
    "seed_dir",
    "spec_path",
    "summary_lines",
    "to_csv",
    "to_latex",
    "to_markdown",
    "uncommitted_refusal",
    "write_tables",
]
