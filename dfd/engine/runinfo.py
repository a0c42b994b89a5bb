"""What a run records and says besides checkpoints: its identity, metrics.json, failed.json, the code
version, and the lines it logs about itself (the model it trains, its metrics, its progress label)."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import subprocess
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from dfd.rundir import FAILED_FILE, METRICS_FILE, RESULTS_DIR, atomic_write_json

from .config import CONF_DIR


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict[str, Any]:
    """Package version and, when run from a git checkout, the commit and whether its tracked code differs from
    it (``dirty``); changes under :data:`~dfd.rundir.RESULTS_DIR` (collected tables and figures) are not code."""
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
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}"], cwd=repo, capture_output=True, text=True, check=True, timeout=10)
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


# ----------------------------------------------------------------------------- what a run says about itself


def model_scale_file(family: str, scale: str, role: str) -> Path:
    """The file that sizes a ``role`` model of ``family`` at ``scale`` (``conf/model_scale/<family>/<scale>_<role>.yaml``)."""
    return CONF_DIR / "model_scale" / family / f"{scale}_{role}.yaml"


def describe_model(options: Any, role: str, scale: str) -> str:
    """One line naming the model a run trains or distils from: family, backbone, widths, and what the scale changed.

    ``teacher=`` and ``student=`` name full-size models; at a scale with a
    ``conf/model_scale/<family>/<scale>_<role>.yaml`` the model is shrunk to the sizes that file sets.
    """
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    family = values.get("family", "?")
    path = model_scale_file(family, scale, role)
    scaled = yaml.safe_load(path.read_text()) if path.is_file() else None
    keys = ["backbone", *(k for k in values if k.endswith(("channels", "_size")) and k != "batch_size")]
    keys += [k for k in (scaled or {}) if k not in keys]
    shown = ", ".join(f"{k}={values[k]}" for k in keys if k in values)
    line = f"{role}: {family} ({shown})"
    if scaled:
        return f"{line}; scale={scale} shrank it to the sizes of {path.relative_to(CONF_DIR.parent)}"
    if scale != "full":
        return f"{line}; scale={scale}, but {family} has no {path.relative_to(CONF_DIR.parent)}: full size"
    return line


def run_label(cfg: Any, run_dir: Path) -> str:
    """How progress bars and messages name a run: ``table5/tf_mse seed0``, or ``teacher <run dir>``."""
    exp = cfg.experiment
    if exp.table is not None and exp.row:
        return f"table{exp.table}/{exp.row} seed{cfg.seed}"
    return f"{cfg.train.role} {run_dir.name}"


def metrics_table(metrics: dict[str, Any]) -> str:
    """The metrics of a finished run as a small aligned table (one metric a line)."""
    if not metrics:
        return "  (not evaluated: trainer.evaluate=false)"
    width = max(len(k) for k in metrics)
    lines = [f"  {'metric':<{width}}  value"]
    lines += [f"  {k:<{width}}  {'—' if v is None else format(v, '.2f'):>6}" for k, v in metrics.items()]
    return "\n".join(lines)
