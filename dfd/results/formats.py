"""Writing a :class:`CollectedTable` as Markdown, CSV and LaTeX, and logging it to W&B.

Cells without a number a run produced are "—" (Markdown), "---" (LaTeX) or empty
(CSV), never 0. A table with missing, partial, stale, failed or error rows is written
beside the results (``table<N>.partial.*``), never over them, unless asked (``force``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dfd.rundir import atomic_write_text

from .tables import CollectedRow, CollectedTable, short_error

__all__ = [
    "SMOKE_WARNING",
    "latex_escape",
    "log_wandb",
    "output_stem",
    "records",
    "summary_lines",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_tables",
]

EMPTY = "—"
SMOKE_WARNING = (
    "Smoke scale: these numbers come from small models trained briefly on synthetic data. "
    "They show that the pipeline runs end to end and are NOT comparable with the paper's numbers."
)
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
    cell = row.cells[name]
    mean = _num(cell.mean, decimals)
    if mean is None:
        return None
    std = cell.std
    return mean if std is None else f"{mean} ± {std:.{decimals}f}"


def _header_facts(table: CollectedTable) -> list[str]:
    spec = table.spec
    facts = [
        f"Scale: {table.scale}",
        f"Seeds: {', '.join(str(s) for s in table.seeds)}",
        f"Runs: {table.runs_root / table.scale / spec.name}",
    ]
    if spec.path is not None:
        facts.append(f"Spec: {_display_path(spec.path)}")
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
    if table.scale == "smoke":
        out += ["", f"> **{SMOKE_WARNING}**"]
    out.append("")

    header = ["Group", *spec.labels]
    for name in spec.metrics:
        header += [f"{name} (paper)", f"{name} (ours)", f"Δ {name}"]
    header += ["Status", "Row"]
    align = ["---"] * (1 + len(spec.labels)) + ["---:"] * (3 * len(spec.metrics)) + ["---", "---"]
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
            ]
        cells += [_md(row.status_text), f"`{row.spec.id}`"]
        out.append("| " + " | ".join(cells) + " |")

    notes = [f"- `{row.spec.id}`: {_md(row.spec.note)}" for row in table.rows if row.spec.note]
    if notes:
        out += ["", "Notes:", "", *notes]
    problems = [f"- `{row.spec.id}` {_md(p)}" for row in table.rows for p in row.problems]
    if problems:
        out += ["", "Problems:", "", *problems]
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- CSV / records


def records(table: CollectedTable) -> tuple[list[str], list[list[Any]]]:
    """Columns and one record per row (None where there is no value); used by CSV and W&B."""
    spec = table.spec
    columns = ["group", "row_id", *spec.labels, "status", "n"]
    for name in spec.metrics:
        columns += [f"{name}_paper", f"{name}_mean", f"{name}_std", f"{name}_delta"]
    columns.append("detail")

    def rnd(value: float | None) -> float | None:
        return None if value is None else round(value, CSV_ROUND)

    data = []
    for row in table.rows:
        record: list[Any] = [row.spec.group, row.spec.id, *(row.spec.labels[label] for label in spec.labels)]
        record += [row.status, row.n_finished]
        for name in spec.metrics:
            cell = row.cells[name]
            record += [cell.paper, rnd(cell.mean), rnd(cell.std), rnd(cell.delta)]
        record.append(row.status_text)
        data.append(record)
    return columns, data


def to_csv(table: CollectedTable) -> str:
    """One machine-readable line per row: group, row_id, labels, status, n, then per metric
    ``<m>_paper, <m>_mean, <m>_std, <m>_delta``, and ``detail`` (the readable status)."""
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
    width = n_labels + 3 * n_metrics + 1
    out = [
        f"% Table {spec.number}: {latex_escape(spec.title)}",
        "% " + latex_escape(" | ".join(_header_facts(table))),
        "% Generated by scripts/collect.py; requires \\usepackage{booktabs} (and amssymb for \\checkmark).",
    ]
    if table.scale == "smoke":
        out.append("% " + latex_escape(SMOKE_WARNING))
    out.append(r"\begin{tabular}{" + "l" * n_labels + "rrr" * n_metrics + "l}")
    out.append(r"\toprule")
    spans = [rf"\multicolumn{{3}}{{c}}{{{latex_escape(name)}}}" for name in spec.metrics]
    top = [""] * n_labels + spans + [""]
    out.append(" & ".join(top) + r" \\")
    rules = [rf"\cmidrule(lr){{{n_labels + 1 + 3 * i}-{n_labels + 3 + 3 * i}}}" for i in range(n_metrics)]
    out.append(" ".join(rules))
    sub = [latex_escape(label) for label in spec.labels]
    sub += ["Paper", "Ours", r"$\Delta$"] * n_metrics + ["Status"]
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
            ]
        cells.append(latex_escape(row.status_text))
        out.append(" & ".join(cells) + r" \\")
    out.append(r"\bottomrule")
    if table.scale == "smoke":
        out.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize {latex_escape(SMOKE_WARNING)}}} \\")
    out.append(r"\end{tabular}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- files and W&B


def _scale_of(md_path: Path) -> str | None:
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
    if table.scale != "full" and _scale_of(Path(out_dir) / f"{stem}.md") == "full":
        stem = f"{stem}.{table.scale}"
    return stem if table.complete or force else stem + PARTIAL_SUFFIX


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
    """One line per row: its id, status and main metric (the spec's first column), ours and the paper's."""
    name, metric = next(iter(table.spec.metrics.items()))
    width = max(len(row.spec.id) for row in table.rows)
    lines = []
    for row in table.rows:
        cell = row.cells[name]
        ours = _reproduced(row, name, metric.decimals) or EMPTY
        paper = _num(cell.paper, metric.decimals) or EMPTY
        lines.append(f"{row.spec.id:<{width}}  {name} {ours:>12} (paper {paper})  {short_error(row.status_text, 90)}")
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
