"""What a run records besides checkpoints: its identity, metrics.json, failed.json, the code version."""
from __future__ import annotations

import datetime as _dt
import subprocess
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from dfd.rundir import FAILED_FILE, METRICS_FILE, atomic_write_json


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict[str, Any]:
    """Package version and, when run from a git checkout, the commit and whether the tree is dirty."""
    try:
        version = metadata.version("dfd")
    except metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"version": version, "commit": None, "dirty": None}
    if not (repo / ".git").exists():
        return info  # an installed copy: no checkout to ask
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True, timeout=10)
        info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _describe(options: Any) -> str:
    return " ".join(str(getattr(options, k)) for k in ("family", "backbone") if getattr(options, k, None))


def experiment_info(cfg: Any) -> dict[str, Any]:
    """The identity of a run (table, row, seed, scale, role, methods, models), as metrics.json records it."""
    distilling = cfg.train.role == "student" and bool(cfg.distill.methods)
    return {
        "table": cfg.experiment.table,
        "row": cfg.experiment.row,
        "seed": cfg.seed,
        "scale": cfg.scale.name,
        "role": cfg.train.role,
        "methods": list(cfg.distill.methods) if cfg.train.role == "student" else [],
        "teacher": _describe(cfg.teacher) if (cfg.train.role == "teacher" or distilling) else None,
        "student": _describe(cfg.student) if cfg.train.role == "student" else None,
    }


def write_metrics(run_dir: Path, *, metrics: dict, losses: dict, timings: dict, experiment: dict, version: dict, config_digest: str,
                  optimization: dict | None = None) -> dict:
    """Write ``metrics.json``: the record of a finished run (the only file the table collector trusts)."""
    record = {
        "status": "finished",
        "metrics": metrics,
        "losses": losses,
        "optimization": optimization or {},
        "timings": timings,
        "code_version": version,
        "experiment": experiment,
        "finished_at": now(),
        "config_digest": config_digest,
    }
    atomic_write_json(record, run_dir / METRICS_FILE)
    return record


def write_failure(run_dir: Path, err: BaseException, experiment: dict) -> None:
    atomic_write_json(
        {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
            "experiment": experiment,
            "failed_at": now(),
        },
        run_dir / FAILED_FILE,
    )
