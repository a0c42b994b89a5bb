"""Filling a table spec from run directories: :func:`collect_table`.

Row status, in order of precedence:

- ``error``: some requested seed has an unreadable or mismatched ``metrics.json``;
  the row shows no numbers until the directory is fixed.
- ``stale``: some requested seed finished with another config than the row's (its
  ``config_digest`` is not the expected one); the row shows no numbers until it is rerun.
- ``ok``: every requested seed finished.
- ``partial``: some, not all, finished; numbers come from the finished ones.
- ``not_implemented``: nothing finished and the sweep driver left ``not_implemented.json``.
- ``failed``: nothing finished and some seed left ``failed.json``.
- ``missing``: nothing else (no directory, or seed directories still running or
  interrupted, reported as "incomplete").

Numbers: mean over the finished seeds, sample standard deviation (n-1) when at
least two seeds define the metric, n (the seeds that define it), and Δ = mean - paper.

Differences to the baseline (the row each row is compared with: :meth:`TableSpec.baseline_of`,
e.g. the group's undistilled student). Per metric, Δ_base = mean - mean_baseline and the seeds'
spread s = √(std² + std_baseline²) (the two rows' seed-to-seed standard deviations combined;
deliberately not the smaller standard error of the means). The verdict (:class:`Comparison`):

- ``beyond``: n ≥ 2 on both sides and |Δ_base| > s: a difference the seeds do not explain;
- ``within``: n ≥ 2 on both sides and |Δ_base| ≤ s: within the seeds' spread, not a gain or a loss;
- ``no_spread``: either side has a single seed (n = 1): no spread to tell the difference from noise;
- ``baseline``: the row is the baseline itself; None: either side has no number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .runs import SCALES, RowRuns, SeedResult, read_row
from .spec import RowSpec, TableSpec

__all__ = ["COMPLETE_STATUSES", "Cell", "CollectedRow", "CollectedTable", "Comparison", "RowStatus", "Verdict",
           "code_text", "collect_table", "compare", "short_error"]

RowStatus = Literal["ok", "partial", "missing", "stale", "failed", "not_implemented", "error"]
Verdict = Literal["beyond", "within", "no_spread", "baseline"]
COMPLETE_STATUSES = ("ok", "not_implemented")  # a table whose rows all have one of these is complete


def short_error(message: str, limit: int = 100) -> str:
    """First non-empty line of an error message, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Cell:
    """One metric of one row: the paper's value and the per-seed reproduced values."""

    paper: float | None
    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def delta(self) -> float | None:
        mean = self.mean
        return None if mean is None or self.paper is None else mean - self.paper


@dataclass(frozen=True)
class Comparison:
    """One metric of a row against its baseline's (module docstring): Δ_base, the spread s, the verdict."""

    delta: float | None = None
    spread: float | None = None
    verdict: Verdict | None = None


def compare(cell: Cell, base: Cell) -> Comparison:
    """``cell`` against the baseline's ``base`` by the rule of the module docstring."""
    if cell.mean is None or base.mean is None:
        return Comparison()
    delta = cell.mean - base.mean
    if cell.n < 2 or base.n < 2:
        return Comparison(delta, None, "no_spread")
    spread = math.hypot(cell.std or 0.0, base.std or 0.0)
    return Comparison(delta, spread, "within" if abs(delta) <= spread else "beyond")


def code_text(cv: Mapping) -> str:
    """A run's code version as text: ``0.1.0 (abc123, dirty)``."""
    extra = [str(cv["commit"])] if cv.get("commit") else []
    if cv.get("dirty"):
        extra.append("dirty")
    return str(cv.get("version", "?")) + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class CollectedRow:
    """A spec row with what its runs say."""

    spec: RowSpec
    status: RowStatus
    n_finished: int  # finished seeds whose numbers are shown (0 for an error row)
    n_seeds: int
    cells: dict[str, Cell]
    runs: RowRuns
    detail: str = ""
    baseline: CollectedRow | None = None  # the row it is compared with (None: none; itself for the baseline)

    def versus(self, name: str) -> Comparison:
        """Metric ``name`` against the baseline row's (module docstring)."""
        if self.baseline is None:
            return Comparison()
        if self.baseline is self:
            return Comparison(0.0, None, "baseline") if self.cells[name].mean is not None else Comparison()
        return compare(self.cells[name], self.baseline.cells[name])

    @property
    def status_text(self) -> str:
        """Human-readable status: ``ok (n=3)``, ``partial (2/3 seeds)``, ``failed: ...``."""
        if self.status == "ok":
            return f"ok (n={self.n_finished})"
        if self.status == "partial":
            return f"partial ({self.n_finished}/{self.n_seeds} seeds)"
        if self.status == "missing":
            return f"missing ({self.detail})" if self.detail else "missing"
        if self.status == "not_implemented":
            return f"not implemented: {self.detail}"
        return f"{self.status}: {self.detail}"

    @property
    def used(self) -> list[SeedResult]:
        """The finished seeds whose numbers the row shows (none for an ``error`` row)."""
        return self.runs.with_status("finished") if self.status in ("ok", "partial") else []

    @property
    def problems(self) -> list[str]:
        """One line per seed that did not finish (for footnotes); missing seeds are
        listed only for a partial row, where they explain the gap."""
        out = []
        for seed in self.runs.seeds:
            if seed.status == "missing" and self.status == "partial":
                out.append(f"seed {seed.seed}: missing (no {seed.path})")
            if seed.status in ("failed", "error", "stale"):
                out.append(f"seed {seed.seed}: {seed.status}: {short_error(seed.error or '', 200)}")
            elif seed.status == "incomplete":
                out.append(f"seed {seed.seed}: incomplete (running or interrupted) in {seed.path}")
        return out


@dataclass
class CollectedTable:
    """A table spec filled from the runs of one scale and seed set."""

    spec: TableSpec
    scale: str
    seeds: list[int]
    runs_root: Path
    rows: list[CollectedRow]

    @property
    def complete(self) -> bool:
        """Every row finished with all its seeds (or is not implemented): nothing missing, stale, failed or wrong."""
        return all(row.status in COMPLETE_STATUSES for row in self.rows)

    @property
    def models(self) -> dict[str, list[str]]:
        """Per group, the distinct models the finished runs report (from ``experiment``)."""
        out: dict[str, list[str]] = {}
        for row in self.rows:
            for seed in row.used:
                exp = seed.experiment
                teacher, student = exp.get("teacher"), exp.get("student")
                if exp.get("role") == "teacher":
                    text = f"{teacher} (teacher)" if teacher else ""
                elif student:
                    text = f"{teacher} → {student}" if teacher else str(student)
                else:
                    text = ""
                if text and text not in out.setdefault(row.spec.group, []):
                    out[row.spec.group].append(text)
        return {group: models for group, models in out.items() if models}

    @property
    def code_versions(self) -> list[str]:
        """Distinct code versions of the finished runs, e.g. ``0.1.0 (abc123, dirty)``."""
        seen: list[str] = []
        for row in self.rows:
            for seed in row.used:
                text = code_text(seed.code_version) if seed.code_version else None
                if text and text not in seen:
                    seen.append(text)
        return seen

    @property
    def code_warning(self) -> str | None:
        """What a reader must know about the code the runs ran: several versions, or uncommitted (dirty) code."""
        used = [seed for row in self.rows for seed in row.used]
        dirty = sum(1 for seed in used if seed.code_version.get("dirty"))
        problems = []
        if len(self.code_versions) > 1:
            problems.append(f"the runs come from {len(self.code_versions)} different code versions")
        if dirty:
            problems.append(f"{dirty} of {len(used)} runs ran uncommitted code (dirty): no commit reproduces them exactly")
        text = "; ".join(problems)
        return text[:1].upper() + text[1:] if text else None

    @property
    def single_seed(self) -> bool:
        """One seed per row: no error bars, and no difference can be told from seed noise."""
        return len(self.seeds) == 1


def _collect_row(spec: TableSpec, row: RowSpec, runs: RowRuns) -> CollectedRow:
    n_seeds = len(runs.seeds)
    finished = runs.with_status("finished")
    errors = runs.with_status("error")
    stale = runs.with_status("stale")
    failed = runs.with_status("failed")
    incomplete = runs.with_status("incomplete")
    cells = {name: Cell(paper=row.paper.get(name)) for name in spec.metrics}

    def make(status: RowStatus, detail: str = "", use_numbers: bool = False) -> CollectedRow:
        if use_numbers:
            for name, metric in spec.metrics.items():
                cells[name].values = [v for s in finished if (v := s.value(metric.key)) is not None]
        n_used = len(finished) if use_numbers else 0
        return CollectedRow(row, status, n_used, n_seeds, cells, runs, detail)

    if errors:
        return make("error", short_error(errors[0].error or "", 300))
    if stale:
        return make("stale", "seed " + ", ".join(str(s.seed) for s in stale) + " ran another config than the row's")
    if finished and len(finished) == n_seeds:
        return make("ok", use_numbers=True)
    if finished:
        return make("partial", use_numbers=True)
    if runs.not_implemented:
        return make("not_implemented", short_error(runs.not_implemented))
    if failed:
        return make("failed", short_error(failed[0].error or ""))
    if incomplete:
        return make("missing", "incomplete: seed " + ", ".join(str(s.seed) for s in incomplete))
    return make("missing")


def collect_table(
    spec: TableSpec, runs_root: str | Path, scale: str, seeds: list[int] | tuple[int, ...] = (0,),
    expected: Mapping[str, Mapping[int, str]] | None = None,
) -> CollectedTable:
    """Read ``<runs_root>/<scale>/table<N>/<row>/seed<S>`` for every row of ``spec``.

    ``expected`` maps a row id and a seed to the config digest its run must have (the sweep's
    plan computes them: ``dfd.engine.sweep.plan_table(...).digests``); a finished run with
    another digest makes the row ``stale``. Rows and seeds it does not name are not checked.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    rows = [
        _collect_row(spec, row, read_row(runs_root, scale, spec.number, row.id, seeds, (expected or {}).get(row.id)))
        for row in spec.rows
    ]
    by_id = {row.spec.id: row for row in rows}
    for row in rows:
        base = spec.baseline_of(row.spec.id)
        row.baseline = by_id[base] if base else None
    return CollectedTable(spec=spec, scale=scale, seeds=seeds, runs_root=Path(runs_root), rows=rows)
