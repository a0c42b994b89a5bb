"""Plan and launch the runs of a paper table: its teachers, then its rows as Hydra multiruns.

The rows come from the table spec (``experiments/tableN.yaml``), registered as
``+row=table<N>_<id>`` configs (:mod:`dfd.engine.rows`); nothing is written twice.
Runs live where :mod:`dfd.rundir` says (``<runs_root>/<scale>/table<N>/<row>/seed<S>/``; teachers
in ``<runs_root>/<scale>/teachers/<teacher>-<digest>/``, shared by every table that needs the same
teacher). A finished run is never redone; an interrupted one resumes. Runs are launched as
``python -m dfd.cli.train``, so the sweep works from an installed package.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, open_dict

from dfd.models import ComponentNotImplemented
from dfd.rundir import (
    CHECKPOINT,
    METRICS_FILE,
    NOT_IMPLEMENTED_FILE,
    ROW_SEED,
    atomic_write_json,
    config_digest,
    row_dir,
    seed_dir,
    table_dir,
    teacher_dir,
)

from .config import load_config, to_plain
from .rows import row_name
from .runinfo import now

log = logging.getLogger(__name__)

TRAIN_MODULE = "dfd.cli.train"
LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")

Compose = Callable[[Sequence[str]], DictConfig]  # overrides -> config with its `hydra` node


@dataclass
class TeacherPlan:
    name: str  # <teacher option>-<digest>
    overrides: list[str]
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS_FILE).is_file()


@dataclass
class TablePlan:
    table: int
    table_dir: Path
    not_implemented: dict[str, str] = field(default_factory=dict)  # row id -> reason
    finished: list[str] = field(default_factory=list)
    to_run: dict[str | None, list[str]] = field(default_factory=dict)  # teacher name (None: no teacher) -> row ids
    teachers: dict[str, TeacherPlan] = field(default_factory=dict)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def _teacher_overrides(row_overrides: Sequence[str]) -> list[str]:
    """The overrides of a row that define its teacher's training: teacher.* and data.*."""
    return [ov for ov in row_overrides if ov.split("=", 1)[0].split(".")[0] in ("teacher", "data")]


def plan_table(
    spec, *, runs_root: str | Path, scale: str, seeds: Sequence[int], base: Sequence[str], compose: Compose,
    teacher_checkpoints: dict[str, str] | None = None,
) -> TablePlan:
    """Decide, for every row of ``spec``, whether it is finished, not implemented, or to run (and with which teacher).

    ``teacher_checkpoints`` maps a teacher option (or ``"*"`` for every teacher) to a
    checkpoint to use instead of training one.
    """
    given = teacher_checkpoints or {}
    plan = TablePlan(spec.number, table_dir(runs_root, scale, spec.number))
    for row in spec.rows:
        cfg = compose([*base, f"+row={row_name(spec.number, row.id)}"])
        choices = cfg.hydra.runtime.choices
        cfg = _without_hydra(cfg)
        needs_teacher = cfg.train.role == "student" and bool(cfg.distill.methods)
        try:
            load_config(cfg, require_teacher=False)
        except ComponentNotImplemented as err:
            plan.not_implemented[row.id] = str(err)
            continue
        (row_dir(runs_root, scale, spec.number, row.id) / NOT_IMPLEMENTED_FILE).unlink(missing_ok=True)  # implemented since
        if all((seed_dir(runs_root, scale, spec.number, row.id, s) / METRICS_FILE).is_file() for s in seeds):
            plan.finished.append(row.id)
            continue
        teacher = None
        if needs_teacher:
            option = choices.teacher
            if option in given or "*" in given:
                teacher = f"given:{given.get(option, given.get('*'))}"
            else:
                overrides = [*base, "train=teacher", *_teacher_overrides(row.overrides)]
                tcfg = load_config(_without_hydra(compose(overrides)))
                teacher = f"{option}-{config_digest(to_plain(tcfg))[:8]}"
                plan.teachers.setdefault(teacher, TeacherPlan(teacher, overrides, teacher_dir(runs_root, scale, teacher)))
        plan.to_run.setdefault(teacher, []).append(row.id)
    return plan


def mark_not_implemented(plan: TablePlan) -> None:
    for row_id, reason in plan.not_implemented.items():
        atomic_write_json({"status": "not_implemented", "error": reason, "marked_at": now()},
                          plan.table_dir / row_id / NOT_IMPLEMENTED_FILE)


def _launcher_overrides(launcher: str) -> list[str]:
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    return [] if launcher == "basic" else [f"hydra/launcher={launcher}"]


def teacher_command(teacher: TeacherPlan, launcher: str, python: str = sys.executable) -> list[str]:
    """One-job multirun, so that the chosen launcher (e.g. SLURM) trains the teacher too."""
    return [python, "-m", TRAIN_MODULE, "-m", *_launcher_overrides(launcher),
            f"hydra.sweep.dir={teacher.run_dir.parent}", f"hydra.sweep.subdir={teacher.run_dir.name}", *teacher.overrides]


def rows_command(plan: TablePlan, teacher: str | None, seeds: Sequence[int], base: Sequence[str], launcher: str,
                 python: str = sys.executable) -> list[str]:
    """One Hydra multirun over the rows sharing ``teacher`` and over the seeds."""
    rows = ",".join(row_name(plan.table, r) for r in plan.to_run[teacher])
    subdir = ROW_SEED.format(row="${experiment.row}", seed="${seed}")
    cmd = [python, "-m", TRAIN_MODULE, "-m", *_launcher_overrides(launcher), f"hydra.sweep.dir={plan.table_dir}",
           f"hydra.sweep.subdir={subdir}", *base, f"+row={rows}", f"seed={','.join(map(str, seeds))}"]
    if teacher is not None:
        ckpt = teacher.split(":", 1)[1] if teacher.startswith("given:") else str(plan.teachers[teacher].checkpoint)
        cmd.append(f"teacher.checkpoint={ckpt}")
    return cmd


def run_plan(plan: TablePlan, *, seeds: Sequence[int], base: Sequence[str], launcher: str = "basic",
             dry_run: bool = False) -> int:
    """Train the missing teachers, then every row group; return the worst exit status."""
    if not dry_run:
        mark_not_implemented(plan)
    status = 0
    failed_teachers = set()
    for name, teacher in plan.teachers.items():
        if teacher.finished:
            log.info("teacher %s: finished, reused (%s)", name, teacher.run_dir)
            continue
        code = _run(teacher_command(teacher, launcher), dry_run)
        if code != 0 or (not dry_run and not teacher.finished):
            log.error("teacher %s failed (exit %d); its rows are skipped", name, code)
            failed_teachers.add(name)
            status = max(status, code or 1)
    for teacher in plan.to_run:
        if teacher in failed_teachers:
            continue
        status = max(status, _run(rows_command(plan, teacher, seeds, base, launcher), dry_run))
    return status


def _run(cmd: list[str], dry_run: bool) -> int:
    printable = " ".join(_quote(c) for c in cmd)
    if dry_run:
        print(printable)
        return 0
    log.info("running: %s", printable)
    return subprocess.run(cmd, check=False).returncode


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in " ${}*[]") else arg
