"""Plan and launch the runs of a paper table: its teachers, then its rows as Hydra multiruns.

The rows come from the table spec (``experiments/tableN.yaml``), registered as
``+row=table<N>_<id>`` configs (:mod:`dfd.engine.rows`); nothing is written twice.
Runs live where :mod:`dfd.rundir` says (``<runs_root>/<scale>/table<N>/<row>/seed<S>/``; teachers
in ``<runs_root>/<scale>/teachers/<teacher>-<digest>/``, shared by every table that needs the same
teacher). Runs are launched as ``python -m dfd.cli.train``, so the sweep works from an installed package.

A row is finished only when the run in each of its seed directories has the row's config: the
``config_digest`` its metrics.json records is the digest of the row composed exactly as its run is
(the base overrides, ``+row=...``, ``seed=S`` and, distilling, ``teacher.checkpoint=`` the planned
teacher's checkpoint). A directory holding a run of another config is stale: moved aside
(``seed<S>.stale-<time>``, never deleted) and rerun. Teachers are checked the same way.
An interrupted run of the row's config resumes.

Real data: a table names synthetic data (the default ``data=synthetic``, or a row's ``data=synthetic_*``);
given ``roots`` (real data kind -> directory), each row's data is swapped for its real twin
(:data:`REAL_DATA`) at that directory, by overrides given to that row's runs and its teacher's.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, open_dict

from dfd.models import ComponentNotImplemented
from dfd.rundir import (
    CHECKPOINT,
    NOT_IMPLEMENTED_FILE,
    ROW_SEED,
    RunDirBusy,
    RunState,
    atomic_write_json,
    config_diff,
    config_digest,
    move_aside,
    read_config,
    run_identity,
    run_state,
    seed_dir,
    table_dir,
    teacher_dir,
)

from .config import CONF_DIR, Config, load_config, to_plain
from .rows import row_name
from .runinfo import now

log = logging.getLogger(__name__)

TRAIN_MODULE = "dfd.cli.train"
LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")

Compose = Callable[[Sequence[str]], DictConfig]  # overrides -> config with its `hydra` node

# The data option (conf/data/<option>.yaml) of each synthetic set's real dataset: what real data swaps a row's for.
REAL_DATA = {
    "synthetic": "coco",
    "synthetic_yolo": "coco_yolo",
    "synthetic_keypoints": "coco_keypoints",
    "synthetic_cityscapes": "cityscapes",
}


class SweepError(ValueError):
    """A table cannot be planned as asked (e.g. real data without the directory one of its rows needs)."""


def data_option(row_overrides: Sequence[str]) -> str:
    """The ``data`` option a row chooses (``synthetic``, the default, when it chooses none)."""
    chosen = [ov.split("=", 1)[1] for ov in row_overrides if ov.split("=", 1)[0] == "data"]
    return chosen[-1] if chosen else "synthetic"


def option_kind(option: str) -> str:
    """The ``data.kind`` of the data option ``option`` (its conf/data file)."""
    path = CONF_DIR / "data" / f"{option}.yaml"
    if not path.is_file():
        raise SweepError(f"data={option!r}: there is no {path}")
    return str(yaml.safe_load(path.read_text(encoding="utf-8")).get("kind"))


def real_data_overrides(row_id: str, row_overrides: Sequence[str], roots: Mapping[str, str]) -> list[str]:
    """The overrides that give a row its real data: ``data=<real option>``, ``data.root=<roots[its kind]>``.
    None needed (``[]``) when ``roots`` is empty: the row keeps its synthetic data."""
    if not roots:
        return []
    option = data_option(row_overrides)
    real = REAL_DATA.get(option, option)
    kind = option_kind(real)
    if kind not in roots:
        raise SweepError(f"row {row_id!r} trains on {kind} data (data={real}): give its directory, "
                         f"data_root={{{kind}: PATH{''.join(f', {k}: ...' for k in roots)}}}")
    return [f"data={real}", f"data.root={roots[kind]}"]


@dataclass
class TeacherPlan:
    name: str  # <teacher option>-<digest>
    overrides: list[str]
    run_dir: Path
    digest: str = ""  # the config digest of the teacher's run

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def state(self) -> RunState:
        return run_state(self.run_dir, self.digest)

    @property
    def finished(self) -> bool:
        return self.state == "finished"


@dataclass
class TablePlan:
    table: int
    table_dir: Path
    not_implemented: dict[str, str] = field(default_factory=dict)  # row id -> reason
    finished: list[str] = field(default_factory=list)
    to_run: dict[str | None, list[str]] = field(default_factory=dict)  # teacher name (None: no teacher) -> row ids
    teachers: dict[str, TeacherPlan] = field(default_factory=dict)
    digests: dict[str, dict[int, str]] = field(default_factory=dict)  # row id -> seed -> the digest its run must have
    stale: dict[str, dict[int, str]] = field(default_factory=dict)  # row id -> seed -> how the run there differs
    identities: dict[str, str] = field(default_factory=dict)  # planned teacher checkpoint (resolved) -> its identity
    data: dict[str, list[str]] = field(default_factory=dict)  # row id -> the overrides giving it real data ([]: synthetic)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def _composable(overrides: Sequence[str]) -> list[str]:
    """The overrides without Hydra's own (``hydra.launcher.*``, ...): they launch runs, not configure them."""
    return [ov for ov in overrides if not ov.lstrip("+~").startswith(("hydra.", "hydra/"))]


def _teacher_overrides(row_overrides: Sequence[str], data: Sequence[str] = ()) -> list[str]:
    """The overrides of a row that define its teacher's training: teacher.*, data.* (its ``data=`` choice replaced
    by ``data``, the real-data overrides, when there are some) and the schedule option (``schedule=swin_1x``, whose
    recipe, e.g. its ``teacher_epochs``, trains the teacher too); the row's own ``schedule.*`` values are the student's."""
    keys = [ov.split("=", 1)[0] for ov in row_overrides]
    kept = [ov for ov, key in zip(row_overrides, keys)
            if (key.split(".")[0] in ("teacher", "data") or key == "schedule") and not (data and key == "data")]
    return [*data, *kept]


def expected_config(cfg: Config, teacher_checkpoint: str | Path | None) -> dict[str, Any]:
    """The plain config a row's run will have: ``cfg`` with ``teacher.checkpoint=`` the planned teacher's."""
    plain = to_plain(cfg)
    if teacher_checkpoint is not None:
        plain["teacher"]["checkpoint"] = str(teacher_checkpoint)
    return plain


@dataclass
class _Planner:
    """Plans one table: what each row needs, and what its seed directories hold."""

    plan: TablePlan
    runs_root: str | Path
    scale: str
    seeds: Sequence[int]
    base: list[str]
    compose: Compose
    given: dict[str, str]
    roots: Mapping[str, str] = field(default_factory=dict)
    _teachers: dict[tuple[str, ...], TeacherPlan] = field(default_factory=dict)

    def config(self, row, seed: int) -> tuple[Config, Any]:
        """The row's typed config for ``seed``, and Hydra's group choices."""
        name = row_name(self.plan.table, row.id)
        composed = self.compose([*_composable(self.base), *self.plan.data[row.id], f"+row={name}", f"seed={seed}"])
        choices = composed.hydra.runtime.choices
        return load_config(_without_hydra(composed), require_teacher=False), choices

    def teacher(self, row, option: str) -> tuple[str, Path]:
        """The teacher a distillation row uses (given, or planned) and its checkpoint."""
        if option in self.given or "*" in self.given:
            path = self.given.get(option, self.given.get("*"))
            return f"given:{path}", Path(path)
        overrides = [*self.base, "train=teacher", *_teacher_overrides(row.overrides, self.plan.data[row.id])]
        key = tuple(overrides)
        if key not in self._teachers:
            digest = config_digest(to_plain(load_config(_without_hydra(self.compose(_composable(overrides))))))
            name = f"{option}-{digest[:8]}"
            teacher = self.plan.teachers.setdefault(name, TeacherPlan(name, overrides, teacher_dir(self.runs_root, self.scale, name), digest))
            self.plan.identities[str(teacher.checkpoint.resolve())] = run_identity(digest)
            self._teachers[key] = teacher
        return self._teachers[key].name, self._teachers[key].checkpoint

    def row(self, row) -> None:
        plan = self.plan
        plan.data[row.id] = real_data_overrides(row.id, row.overrides, self.roots)
        try:
            cfg, choices = self.config(row, self.seeds[0])
        except ComponentNotImplemented as err:
            plan.not_implemented[row.id] = str(err)
            return
        teacher, checkpoint = self.teacher(row, choices.teacher) if cfg.distilling else (None, None)
        states = []
        for seed in self.seeds:
            if seed != self.seeds[0]:
                cfg, _ = self.config(row, seed)
            expected = expected_config(cfg, checkpoint)
            digest = plan.digests.setdefault(row.id, {})[seed] = config_digest(expected, plan.identities)
            path = seed_dir(self.runs_root, self.scale, plan.table, row.id, seed)
            states.append(run_state(path, digest, plan.identities))
            if states[-1] == "stale":
                recorded = read_config(path)
                diff = config_diff(recorded, expected, plan.identities) if recorded else ["no readable config.yaml"]
                plan.stale.setdefault(row.id, {})[seed] = "; ".join(diff[:6]) or "its metrics.json has another config digest"
        if all(state == "finished" for state in states):
            plan.finished.append(row.id)
        else:
            plan.to_run.setdefault(teacher, []).append(row.id)


def plan_table(
    spec, *, runs_root: str | Path, scale: str, seeds: Sequence[int], base: Sequence[str], compose: Compose,
    teacher_checkpoints: dict[str, str] | None = None, roots: Mapping[str, str] | None = None,
) -> TablePlan:
    """Decide, for every row of ``spec``, whether it is finished, not implemented, or to run (and with which
    teacher), and the config digest each of its runs must have (``plan.digests``, for the collector too).
    Reads run directories only; :func:`run_plan` writes.

    ``teacher_checkpoints`` maps a teacher option (or ``"*"`` for every teacher) to a
    checkpoint to use instead of training one. ``roots`` (real data kind -> directory) swaps each row's
    synthetic data for its real twin (:func:`real_data_overrides`); None or empty: the synthetic sets.
    """
    plan = TablePlan(spec.number, table_dir(runs_root, scale, spec.number))
    planner = _Planner(plan, runs_root, scale, list(seeds), list(base), compose, dict(teacher_checkpoints or {}), dict(roots or {}))
    for row in spec.rows:
        planner.row(row)
    return plan


def mark_not_implemented(plan: TablePlan) -> None:
    """Write each not-implemented row's marker; remove it from rows implemented since."""
    for row_id, reason in plan.not_implemented.items():
        atomic_write_json({"status": "not_implemented", "error": reason, "marked_at": now()},
                          plan.table_dir / row_id / NOT_IMPLEMENTED_FILE)
    for row_id in plan.digests:
        (plan.table_dir / row_id / NOT_IMPLEMENTED_FILE).unlink(missing_ok=True)


def set_aside_stale(plan: TablePlan, rows: Sequence[str]) -> list[Path]:
    """Move the seed directories of ``rows`` that hold a run of another config to ``seed<S>.stale-<time>``."""
    moved = []
    for row in rows:
        for seed, diff in plan.stale.get(row, {}).items():
            path = plan.table_dir / ROW_SEED.format(row=row, seed=seed)
            try:
                moved.append(move_aside(path))
            except RunDirBusy as err:
                log.error("table%d/%s seed %d is stale but %s", plan.table, row, seed, err)
                continue
            log.warning("table%d/%s seed %d: its run had another config (%s); moved to %s, rerunning",
                        plan.table, row, seed, diff, moved[-1].name)
    return moved


def _launcher_overrides(launcher: str) -> list[str]:
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    return [] if launcher == "basic" else [f"hydra/launcher={launcher}"]


def teacher_command(teacher: TeacherPlan, launcher: str, python: str = sys.executable) -> list[str]:
    """One-job multirun, so that the chosen launcher (e.g. SLURM) trains the teacher too."""
    return [python, "-m", TRAIN_MODULE, "-m", *_launcher_overrides(launcher),
            f"hydra.sweep.dir={teacher.run_dir.parent}", f"hydra.sweep.subdir={teacher.run_dir.name}", *teacher.overrides]


def row_batches(plan: TablePlan, teacher: str | None) -> list[list[str]]:
    """The rows sharing ``teacher``, split by the data they train on (one multirun each)."""
    batches: dict[tuple[str, ...], list[str]] = {}
    for row in plan.to_run[teacher]:
        batches.setdefault(tuple(plan.data.get(row, [])), []).append(row)
    return list(batches.values())


def rows_command(plan: TablePlan, teacher: str | None, seeds: Sequence[int], base: Sequence[str], launcher: str,
                 python: str = sys.executable, rows: Sequence[str] | None = None) -> list[str]:
    """One Hydra multirun over ``rows`` (default: every row sharing ``teacher``; they must share their data) and the seeds."""
    rows = list(plan.to_run[teacher] if rows is None else rows)
    data = plan.data.get(rows[0], [])
    if any(plan.data.get(r, []) != data for r in rows):
        raise SweepError(f"rows {rows} train on different data; launch them apart (row_batches)")
    base = [*base, *data]
    rows = ",".join(row_name(plan.table, r) for r in rows)
    subdir = ROW_SEED.format(row="${experiment.row}", seed="${seed}")
    cmd = [python, "-m", TRAIN_MODULE, "-m", *_launcher_overrides(launcher), f"hydra.sweep.dir={plan.table_dir}",
           f"hydra.sweep.subdir={subdir}", *base, f"+row={rows}", f"seed={','.join(map(str, seeds))}"]
    if teacher is not None:
        ckpt = teacher.split(":", 1)[1] if teacher.startswith("given:") else str(plan.teachers[teacher].checkpoint)
        cmd.append(f"teacher.checkpoint={ckpt}")
    return cmd


def _train_teacher(name: str, teacher: TeacherPlan, launcher: str, dry_run: bool) -> int:
    state = teacher.state
    if state == "finished":
        log.info("teacher %s: finished, reused (%s)", name, teacher.run_dir)
        return 0
    if state == "stale":
        log.warning("teacher %s: %s holds a teacher of another config; it is moved aside and retrained", name, teacher.run_dir)
        if not dry_run:
            move_aside(teacher.run_dir)
    code = _run(teacher_command(teacher, launcher), dry_run)
    if code != 0 or (not dry_run and not teacher.finished):
        log.error("teacher %s failed (exit %d); its rows are skipped", name, code)
        return code or 1
    return 0


def run_plan(plan: TablePlan, *, seeds: Sequence[int], base: Sequence[str], launcher: str = "basic",
             dry_run: bool = False) -> int:
    """Train the missing teachers, move stale runs aside, then run every row group; return the worst exit status."""
    if not dry_run:
        mark_not_implemented(plan)
    status = 0
    failed_teachers = set()
    for name, teacher in plan.teachers.items():
        code = _train_teacher(name, teacher, launcher, dry_run)
        if code:
            failed_teachers.add(name)
            status = max(status, code)
    for teacher, rows in plan.to_run.items():
        if teacher in failed_teachers:
            continue
        if not dry_run:
            set_aside_stale(plan, rows)
        for batch in row_batches(plan, teacher):
            status = max(status, _run(rows_command(plan, teacher, seeds, base, launcher, rows=batch), dry_run))
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
