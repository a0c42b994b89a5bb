"""Reading run directories written by training (never by the collector).

Layout: ``<runs_root>/<scale>/table<N>/<row_id>/seed<S>/`` holding ``metrics.json``
(finished) or ``failed.json`` (failed); a seed directory with neither is a run still
going or interrupted. The sweep driver may put ``not_implemented.json`` in the row
directory. A ``metrics.json`` whose ``experiment`` identity disagrees with where it
lies is reported as an error, never used. Given the config digest the row's run must
have (computed by the caller, which composes the row's config: this package never
composes configs), a finished run of another config is ``stale``, never used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dfd.rundir import FAILED_FILE, METRICS_FILE, NOT_IMPLEMENTED_FILE, SCALES, read_json, row_dir, seed_dir

__all__ = [
    "SCALES",
    "RowRuns",
    "SeedResult",
    "SeedStatus",
    "read_row",
    "read_seed",
    "row_dir",
    "seed_dir",
]

SeedStatus = Literal["finished", "stale", "failed", "incomplete", "missing", "error"]


@dataclass
class SeedResult:
    """What one seed directory says."""

    seed: int
    status: SeedStatus
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)
    code_version: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def value(self, key: str) -> float | None:
        """Metric ``key`` as a float, or None when absent or undefined.

        pycocotools reports -1 for an undefined AP (e.g. no large objects); such
        negative values and NaN/inf count as undefined, never as a number.
        """
        value: Any = self.metrics.get(key)
        if value is None and "/" in key:  # tolerate nested {"bbox": {"AP": ..}}
            value = self.metrics
            for part in key.split("/"):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        value = float(value)
        if not math.isfinite(value) or value < 0:
            return None
        return value


@dataclass
class RowRuns:
    """All requested seeds of one row, plus the row-level not-implemented marker."""

    path: Path
    seeds: list[SeedResult]
    not_implemented: str | None = None

    def with_status(self, status: SeedStatus) -> list[SeedResult]:
        return [s for s in self.seeds if s.status == status]


def _norm_table(value: Any) -> str:
    return str(value).strip().lower().removeprefix("table")


def _identity_mismatch(experiment: Any, expected: dict[str, Any]) -> str | None:
    """Describe how ``experiment`` disagrees with ``expected``; None if it agrees."""
    if not isinstance(experiment, dict):
        return "has no 'experiment' identity"
    problems = []
    for key, want in expected.items():
        if key not in experiment:
            problems.append(f"experiment.{key} missing (expected {want!r})")
            continue
        got = experiment[key]
        same = _norm_table(got) == _norm_table(want) if key == "table" else str(got) == str(want)
        if not same:
            problems.append(f"experiment.{key}={got!r}, expected {want!r}")
    return "; ".join(problems) or None


def _staleness(data: dict[str, Any], metrics_file: Path, expected_digest: str | None) -> str | None:
    """Why a finished run is not a run of the row's config, or None."""
    if expected_digest is None or data.get("config_digest") == expected_digest:
        return None
    recorded = data.get("config_digest")
    return (f"{metrics_file}: the run has config digest {recorded!r}, the row {expected_digest!r}: it ran another "
            "config (other overrides, teacher or code); rerun the table, or collect with the overrides it was run with")


def read_seed(runs_root: str | Path, scale: str, table: int, row_id: str, seed: int,
              expected_digest: str | None = None) -> SeedResult:
    """Read one seed directory; a JSON problem or identity mismatch gives status 'error', a finished run
    whose ``config_digest`` is not ``expected_digest`` (when given) status 'stale'."""
    path = seed_dir(runs_root, scale, table, row_id, seed)
    if not path.is_dir():
        return SeedResult(seed=seed, status="missing", path=path)
    metrics_file, failed_file = path / METRICS_FILE, path / FAILED_FILE
    expected = {"table": table, "row": row_id, "seed": seed, "scale": scale}
    if metrics_file.is_file():  # a finished run wins over an older failure marker
        try:
            data = read_json(metrics_file)
        except (OSError, ValueError) as exc:
            return SeedResult(seed, "error", path, error=f"{metrics_file}: unreadable ({exc})")
        if data.get("status", "finished") != "finished":
            return SeedResult(seed, "error", path, error=f"{metrics_file}: status is {data.get('status')!r}")
        mismatch = _identity_mismatch(data.get("experiment"), expected)
        if mismatch:
            return SeedResult(seed, "error", path, error=f"{metrics_file}: {mismatch}")
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            return SeedResult(seed, "error", path, error=f"{metrics_file}: no 'metrics' object")
        stale = _staleness(data, metrics_file, expected_digest)
        if stale:
            return SeedResult(seed, "stale", path, experiment=data["experiment"], error=stale)
        return SeedResult(
            seed=seed,
            status="finished",
            path=path,
            metrics=metrics,
            experiment=data["experiment"],
            code_version=data.get("code_version") or {},
            timings=data.get("timings") or {},
        )
    if failed_file.is_file():
        try:
            data = read_json(failed_file)
        except (OSError, ValueError) as exc:
            return SeedResult(seed, "failed", path, error=f"unreadable failed.json ({exc})")
        experiment = data.get("experiment") if isinstance(data.get("experiment"), dict) else {}
        error = str(data.get("error") or "unknown error")
        return SeedResult(seed, "failed", path, experiment=experiment, error=error)
    return SeedResult(seed=seed, status="incomplete", path=path)


def read_row(
    runs_root: str | Path, scale: str, table: int, row_id: str, seeds: list[int],
    expected: Mapping[int, str] | None = None,
) -> RowRuns:
    """Read the requested seeds of one row and its ``not_implemented.json``, if any;
    ``expected`` maps a seed to the config digest its run must have."""
    path = row_dir(runs_root, scale, table, row_id)
    not_implemented = None
    marker = path / NOT_IMPLEMENTED_FILE
    if marker.is_file():
        try:
            not_implemented = str(read_json(marker).get("error") or "not implemented")
        except (OSError, ValueError) as exc:
            not_implemented = f"unreadable not_implemented.json ({exc})"
    results = [read_seed(runs_root, scale, table, row_id, seed, (expected or {}).get(seed)) for seed in seeds]
    return RowRuns(path=path, seeds=results, not_implemented=not_implemented)
