"""Writing a :class:`CollectedTable` as Markdown, CSV and LaTeX, and logging it to W&B.

Cells without a number a run produced are "—" (Markdown), "---" (LaTeX) or empty
(CSV), never 0. A table with missing, partial, stale, failed or error rows is written
beside the results (``table<N>.partial.*``), never over them, unless asked (``force``).

Every row states n (its finished seeds) and its mean ± std (std from two seeds on). Every metric has
a "vs baseline" column: the difference to the row's baseline (the group's undistilled student, see
:mod:`dfd.results.tables`), written as a gain or loss only when it lies beyond the seeds' spread:

- ``+1.2 (beyond ±0.5)``: n ≥ 2 on both rows and |Δ| > √(std² + std_baseline²);
- ``+0.3 (within ±0.5: noise)``: n ≥ 2 on both rows and |Δ| ≤ that spread: not a gain or a loss;
- ``+1.2 (n=1: no spread)``: either row has a single seed, so nothing tells the difference from noise;
- ``baseline``: the baseline row itself.

The CSV gives the same as numbers and a verdict (``<m>_vs_baseline``, ``<m>_spread``,
``<m>_verdict``: beyond, within, no_spread, baseline). The header says when the runs come from
several code versions or from uncommitted (dirty) code. :func:`uncommitted_refusal` keeps tables
and figures of uncommitted code out of ``experiments/results/`` (the programs ask it before writing).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfd.rundir import RESULTS_DIR, atomic_write_text

from .spec import default_experiments_dir
from .tables import CollectedRow, CollectedTable, short_error

__all__ = [
    "SMOKE_WARNING",
    "BASELINE_RULE",
    "latex_escape",
    "log_wandb",
    "metric_column",
    "output_stem",
    "results_dir",
    "records",
    "summary_lines",
    "to_csv",
    "to_latex",
    "to_markdown",
    "uncommitted_refusal",
    "write_tables",
]

EMPTY = "—"
SMOKE_WARNING = (
    "Smoke scale: these numbers come from small models trained briefly on synthetic data. "
    "They show that the pipeline runs end to end and are NOT comparable with the paper's numbers. Nor do they rank "
    "the methods: in the demo, a student trained as long as the teacher without distillation scores above the "
    "distilled one (README, the demo)."
)
BASELINE_RULE = (
    "vs baseline: mean minus the baseline row's mean (Baseline above); \"within ±s: noise\" when |Δ| ≤ s = "
    "√(std² + std_baseline²) over the seeds, so it is no gain or loss; \"n=1: no spread\" when either row has one "
    "seed, so it cannot be told from noise; \"beyond ±s\" only when the seeds do not explain it."
)
NO_BASELINE = "none (no undistilled student trains this student; a group's baseline: in the spec names one)"
SINGLE_SEED = "n=1 per row: no error bars, and no difference between rows can be told from seed noise"
CSV_ROUND = 4
PARTIAL_SUFFIX = ".partial"  # table<N>.partial.md: a table that is not complete, beside the results


# --------------------------------------------------------------------------- numbers


def _num(value: float | None, decimals: int) -> str | None:
    return None if value is None else f"{value:.{decimals}f}"


def _signed(value: float | None, decimals: int) -> str | None:
    if value is None:
        return None
    if round(value, decimals) == 0:
        value = 0.0  # no "-0.0"
    return f"{value:+.{decimals}f}"


def _reproduced(row: CollectedRow, name: str, decimals: int) -> str | None:
    """``mean ± std``; ``(n=k)`` after it when fewer seeds define this metric than the row has."""
    cell = row.cells[name]
    mean = _num(cell.mean, decimals)
    if mean is None:
        return None
    std = cell.std
    text = mean if std is None else f"{mean} ± {std:.{decimals}f}"
    return text if cell.n == row.n_finished else f"{text} (n={cell.n})"


def _versus(row: CollectedRow, name: str, decimals: int) -> str | None:
    """The "vs baseline" cell of metric ``name`` (the module docstring's forms); None without numbers."""
    comparison = row.versus(name)
    if comparison.verdict is None:
        return None
    if comparison.verdict == "baseline":
        return "baseline"
    delta = _signed(comparison.delta, decimals)
    if comparison.verdict == "no_spread":
        return f"{delta} (n=1: no spread)"
    spread = f"±{comparison.spread:.{decimals}f}"
    return f"{delta} (within {spread}: noise)" if comparison.verdict == "within" else f"{delta} (beyond {spread})"


def _baselines(table: CollectedTable) -> str:
    """Per group, the row its rows are compared with."""
    per_group: dict[str, str] = {}
    for row in table.rows:
        per_group.setdefault(row.spec.group, row.baseline.spec.id if row.baseline else NO_BASELINE)
    return "; ".join(f"{group}: {base}" for group, base in per_group.items())


def _header_facts(table: CollectedTable) -> list[str]:
    spec = table.spec
    seeds = ", ".join(str(s) for s in table.seeds)
    facts = [
        f"Scale: {table.scale}",
        f"Seeds: {seeds} ({SINGLE_SEED})" if table.single_seed else f"Seeds: {seeds} (n={len(table.seeds)} per complete row)",
        f"Runs: {table.runs_root / table.scale / spec.name}",
    ]
    if spec.path is not None:
        facts.append(f"Spec: {_display_path(spec.path)}")
    facts.append(f"Baseline: {_baselines(table)}")
    return facts


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: CollectedTable) -> str:
    """The table as GitHub-flavoured Markdown with a header of provenance facts."""
    spec = table.spec
    out = [f"# Table {spec.number}: {spec.title}", ""]
    out += [f"- {_md(fact)}" for fact in _header_facts(table)]
    models = table.models
    if models:
        out.append("- Models used by the runs: " + "; ".join(
            f"{_md(group)}: {', '.join(_md(m) for m in ms)}" for group, ms in models.items()
        ))
    if table.code_versions:
        out.append(f"- Code version: {_md(', '.join(table.code_versions))}")
    if table.code_warning:
        out += ["", f"> **{_md(table.code_warning)}.**"]
    if table.scale == "smoke":
        out += ["", f"> **{SMOKE_WARNING}**"]
    out.append("")

    header = ["Group", *spec.labels]
    for name in spec.metrics:
        header += [f"{name} (paper)", f"{name} (ours)", f"Δ {name}", f"{name} vs baseline"]
    header += ["Status", "Row"]
    align = ["---"] * (1 + len(spec.labels)) + ["---:"] * (4 * len(spec.metrics)) + ["---", "---"]
    out += ["| " + " | ".join(_md(h) for h in header) + " |", "| " + " | ".join(align) + " |"]

    previous_group = None
    for row in table.rows:
        group = row.spec.group if row.spec.group != previous_group else ""
        previous_group = row.spec.group
        cells = [_md(group), *(_md(row.spec.labels[label]) or " " for label in spec.labels)]
        for name, metric in spec.metrics.items():
            cell = row.cells[name]
            cells += [
                _num(cell.paper, metric.decimals) or EMPTY,
                _reproduced(row, name, metric.decimals) or EMPTY,
                _signed(cell.delta, metric.decimals) or EMPTY,
                _versus(row, name, metric.decimals) or EMPTY,
            ]
        cells += [_md(row.status_text), f"`{row.spec.id}`"]
        out.append("| " + " | ".join(cells) + " |")

    out += ["", _md(BASELINE_RULE)]
    notes = [f"- `{row.spec.id}`: {_md(row.spec.note)}" for row in table.rows if row.spec.note]
    if notes:
        out += ["", "Notes:", "", *notes]
    problems = [f"- `{row.spec.id}` {_md(p)}" for row in table.rows for p in row.problems]
    if problems:
        out += ["", "Problems:", "", *problems]
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- CSV / records


METRIC_FIELDS = ("paper", "mean", "std", "delta", "vs_baseline", "spread", "verdict")


def metric_column(name: str, field: str) -> str:
    """The CSV column of ``field`` (one of :data:`METRIC_FIELDS`) of metric ``name``: ``mAP_mean``."""
    return f"{name}_{field}"


def records(table: CollectedTable) -> tuple[list[str], list[list[Any]]]:
    """Columns and one record per row (None where there is no value); used by CSV and W&B."""
    spec = table.spec
    columns = ["group", "row_id", *spec.labels, "status", "n", "baseline"]
    for name in spec.metrics:
        columns += [metric_column(name, field) for field in METRIC_FIELDS]
    columns.append("detail")

    def rnd(value: float | None) -> float | None:
        return None if value is None else round(value, CSV_ROUND)

    data = []
    for row in table.rows:
        record: list[Any] = [row.spec.group, row.spec.id, *(row.spec.labels[label] for label in spec.labels)]
        record += [row.status, row.n_finished, row.baseline.spec.id if row.baseline else None]
        for name in spec.metrics:
            cell, versus = row.cells[name], row.versus(name)
            record += [cell.paper, rnd(cell.mean), rnd(cell.std), rnd(cell.delta),
                       rnd(versus.delta), rnd(versus.spread), versus.verdict]
        record.append(row.status_text)
        data.append(record)
    return columns, data


def to_csv(table: CollectedTable) -> str:
    """One machine-readable line per row: group, row_id, labels, status, n, baseline (its row id), then per
    metric ``<m>_paper, <m>_mean, <m>_std, <m>_delta, <m>_vs_baseline, <m>_spread, <m>_verdict``, and
    ``detail`` (the readable status)."""
    columns, data = records(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in data:
        writer.writerow(["" if value is None else value for value in record])
    return buffer.getvalue()


# --------------------------------------------------------------------------- LaTeX

_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    "|": r"\textbar{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "✓": r"\checkmark{}",
    "—": "---",
    "–": "--",
    "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters and map ±, →, ×, Δ, ✓ to math/text commands."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def _latex_num(text: str | None) -> str:
    if text is None:
        return "---"
    return latex_escape(text).replace("-", "$-$").replace("+", "$+$")


def to_latex(table: CollectedTable) -> str:
    """A booktabs ``tabular`` (needs ``booktabs``; ``amssymb`` for the ✓ marks)."""
    spec = table.spec
    n_labels, n_metrics = len(spec.labels), len(spec.metrics)
    width = n_labels + 4 * n_metrics + 1
    out = [
        f"% Table {spec.number}: {latex_escape(spec.title)}",
        "% " + latex_escape(" | ".join(_header_facts(table))),
        "% Generated by scripts/collect.py; requires \\usepackage{booktabs} (and amssymb for \\checkmark).",
    ]
    if table.code_warning:
        out.append("% " + latex_escape(table.code_warning))
    if table.scale == "smoke":
        out.append("% " + latex_escape(SMOKE_WARNING))
    out.append("% " + latex_escape(BASELINE_RULE))
    out.append(r"\begin{tabular}{" + "l" * n_labels + "rrrr" * n_metrics + "l}")
    out.append(r"\toprule")
    spans = [rf"\multicolumn{{4}}{{c}}{{{latex_escape(name)}}}" for name in spec.metrics]
    top = [""] * n_labels + spans + [""]
    out.append(" & ".join(top) + r" \\")
    rules = [rf"\cmidrule(lr){{{n_labels + 1 + 4 * i}-{n_labels + 4 + 4 * i}}}" for i in range(n_metrics)]
    out.append(" ".join(rules))
    sub = [latex_escape(label) for label in spec.labels]
    sub += ["Paper", "Ours", r"$\Delta$", "vs base"] * n_metrics + ["Status"]
    out.append(" & ".join(sub) + r" \\")
    previous_group = None
    for row in table.rows:
        if row.spec.group != previous_group:
            previous_group = row.spec.group
            out.append(r"\midrule")
            out.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(row.spec.group)}}}}} \\")
        cells = [latex_escape(row.spec.labels[label]) for label in spec.labels]
        for name, metric in spec.metrics.items():
            cell = row.cells[name]
            cells += [
                _latex_num(_num(cell.paper, metric.decimals)),
                _latex_num(_reproduced(row, name, metric.decimals)),
                _latex_num(_signed(cell.delta, metric.decimals)),
                _latex_num(_versus(row, name, metric.decimals)),
            ]
        cells.append(latex_escape(row.status_text))
        out.append(" & ".join(cells) + r" \\")
    out.append(r"\bottomrule")
    if table.code_warning:
        out.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize {latex_escape(table.code_warning)}.}} \\")
    if table.scale == "smoke":
        out.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize {latex_escape(SMOKE_WARNING)}}} \\")
    out.append(r"\end{tabular}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- files and W&B


def scale_of(md_path: Path) -> str | None:
    """The scale a collected Markdown table was built at (its "- Scale: X" header line)."""
    if not md_path.is_file():
        return None
    for line in md_path.read_text(encoding="utf-8").splitlines()[:12]:
        if line.startswith("- Scale: "):
            return line[len("- Scale: "):].strip()
    return None


def output_stem(table: CollectedTable, out_dir: str | Path, force: bool = False) -> str:
    """``table<N>``; ``table<N>.smoke`` when ``table<N>.md`` already holds a full-scale table (a smoke
    collection never replaces the paper-scale one); then ``.partial`` when the table is not complete
    (some row missing, partial, stale, failed or in error) and ``force`` is false."""
    stem = table.spec.name
    if table.scale != "full" and scale_of(Path(out_dir) / f"{stem}.md") == "full":
        stem = f"{stem}.{table.scale}"
    return stem if table.complete or force else stem + PARTIAL_SUFFIX


def results_dir() -> Path:
    """``experiments/results/``: the tables and figures a reader is shown (only from committed code)."""
    return (default_experiments_dir() / Path(RESULTS_DIR).name).resolve()


def uncommitted_refusal(out_dir: str | Path, code: Mapping[str, Any], allow_dirty: bool = False) -> str | None:
    """Why writing tables or figures into ``out_dir`` is refused, or None: :func:`results_dir` (and any folder
    in it) takes them from committed code only. ``code`` is the code version of this process
    (``dfd.engine.runinfo.code_version()``); ``allow_dirty`` writes there anyway. Elsewhere is always allowed."""
    target, results = Path(out_dir).resolve(), results_dir()
    if allow_dirty or not code.get("dirty") or not (target == results or results in target.parents):
        return None
    return (f"out_dir={out_dir}: {_display_path(results)}/ takes tables and figures from committed code only, and the "
            f"working tree has uncommitted changes (commit {code.get('commit')}, dirty); commit them first, write "
            "elsewhere (out_dir=DIR), or give allow_dirty=true to write there anyway")


def write_tables(table: CollectedTable, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write ``.md``, ``.csv`` and ``.tex`` into ``out_dir`` under :func:`output_stem`'s name: a table that
    is not complete goes beside the results (``table<N>.partial.*``) unless ``force``; returns format -> path."""
    out_dir = Path(out_dir)
    stem = output_stem(table, out_dir, force)
    return {
        "md": atomic_write_text(out_dir / f"{stem}.md", to_markdown(table)),
        "csv": atomic_write_text(out_dir / f"{stem}.csv", to_csv(table)),
        "tex": atomic_write_text(out_dir / f"{stem}.tex", to_latex(table)),
    }


def summary_lines(table: CollectedTable) -> list[str]:
    """One line per row: its id, status and main metric (the spec's first column that the row fills: Table 7's
    segmentation rows have mIoU, not AP), ours, the paper's and the difference to the baseline (when there is one)."""
    width = max(len(row.spec.id) for row in table.rows)
    lines = []
    for row in table.rows:
        filled = [n for n, c in row.cells.items() if c.paper is not None or c.values]
        name = filled[0] if filled else next(iter(table.spec.metrics))
        metric = table.spec.metrics[name]
        cell = row.cells[name]
        ours = _reproduced(row, name, metric.decimals) or EMPTY
        paper = _num(cell.paper, metric.decimals) or EMPTY
        versus = _versus(row, name, metric.decimals)
        versus = f"  vs baseline {versus}" if versus else ""
        lines.append(f"{row.spec.id:<{width}}  {name} {ours:>12} (paper {paper})  {short_error(row.status_text, 90)}{versus}")
    return lines


def log_wandb(table: CollectedTable, project: str = "dfd", mode: str = "offline", **init_kwargs: Any) -> None:
    """Log the table as a ``wandb.Table`` in run ``table<N>-<scale>`` (group ``table<N>``,
    job_type ``collect``). ``mode="offline"`` needs no account. wandb is imported here only."""
    import wandb

    columns, data = records(table)
    name = table.spec.name
    run = wandb.init(
        project=project,
        mode=mode,
        name=f"{name}-{table.scale}",
        group=name,
        job_type="collect",
        config={"table": table.spec.number, "scale": table.scale, "seeds": list(table.seeds),
                "runs_root": str(table.runs_root)},
        **init_kwargs,
    )
    try:
        run.log({name: wandb.Table(columns=columns, data=data, allow_mixed_types=True)})
    finally:
        run.finish()
