"""Reproduce one paper table: train what it needs, run every row as a Hydra multirun, collect it.

    python scripts/reproduce.py table=5 scale=smoke
    python scripts/reproduce.py table=5 scale=full data_root=/data/coco teacher=/ckpt/rx101.pth seeds=[0,1,2]
    python scripts/reproduce.py table=1 scale=full launcher=submitit_slurm hydra.launcher.partition=gpu ...

Own keys: table (1-7), scale (smoke|bench|full), seeds (list), runs_root (runs), data_root (a COCO
directory or {kind: directory} for each real data kind the table's rows need; default: the synthetic sets), teacher (a checkpoint for every teacher of the table, or
teachers.<option>=PATH for the teacher option <option> of conf/teacher/ only), launcher (basic|submitit_local|submitit_slurm), wandb (true:
log runs and the table to W&B), wandb_project, out_dir (experiments/results), force (write the table over
the results even when a row is missing, stale or failed), allow_dirty (write into experiments/results/ from
uncommitted code: refused otherwise, before anything trains), dry_run (print the commands only). Every other
key=value is passed to each training run, teachers included (e.g. trainer.max_iters=5, teacher.backbone=resnet50,
student.fpn_channels=128, hydra.launcher.* settings).

Where it writes: the runs in <runs_root>/<scale>/table<N>/<row>/seed<S>/ (teachers in
<runs_root>/<scale>/teachers/<option>-<digest>/); a run there of another config is moved aside to
seed<S>.stale-<time>/ and rerun. The table goes to <out_dir>/table<N>.{md,csv,tex} when every row is
complete, else to <out_dir>/table<N>.partial.{md,csv,tex} beside them (force=true: over them anyway).
"""
from __future__ import annotations

import logging
import sys

from dfd.engine.config import compose_config, register_configs
from dfd.engine.rows import register_rows
from dfd.engine.sweep import LAUNCHERS, TablePlan, plan_table, run_plan
from dfd.results import collect_table, load_spec, log_wandb, summary_lines, to_markdown, write_tables
from dfd.results.spec import load_all_specs

from .common import base_overrides, parse_args, refuse_uncommitted, run_program

OWN = {"table": None, "scale": "smoke", "seeds": [0], "runs_root": "runs", "data_root": None, "teacher": None,
       "launcher": "basic", "wandb": False, "wandb_project": "dfd", "out_dir": "experiments/results", "force": False,
       "allow_dirty": False, "dry_run": False}

log = logging.getLogger("dfd.cli.reproduce")


def parse(argv: list[str]) -> tuple[dict, dict[str, str], list[str]]:
    """Own keys (checked; :class:`~dfd.cli.common.UsageError` names a bad one), teacher checkpoints, run overrides."""
    return parse_args(argv, OWN, choices={"launcher": LAUNCHERS})


def describe_plan(name: str, scale: str, plan: TablePlan) -> str:
    teachers = [t for t, p in plan.teachers.items() if not p.finished] or "none"
    text = (f"{name} at {scale} scale: {sum(map(len, plan.to_run.values()))} rows to run, {len(plan.finished)} finished, "
            f"{len(plan.not_implemented)} not implemented, teachers to train: {teachers}")
    stale = [f"{row} seed {seed} ({diff})" for row, seeds in plan.stale.items() for seed, diff in seeds.items()]
    if stale:
        text += f"; {len(stale)} runs of another config are moved aside and rerun: " + "; ".join(stale)
    return text


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    own, teachers, forward = parse(argv)
    if not own["dry_run"]:
        refuse_uncommitted(own["out_dir"], own["allow_dirty"])
    spec = load_spec(own["table"])
    register_configs()
    register_rows(load_all_specs())
    base = base_overrides(own, forward, wandb=own["wandb"])
    plan = plan_table(
        spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"], base=base,
        compose=lambda ov: compose_config(ov, return_hydra_config=True), teacher_checkpoints=teachers, roots=own["data_root"],
    )
    log.info("%s", describe_plan(spec.name, own["scale"], plan))
    status = run_plan(plan, seeds=own["seeds"], base=base, launcher=own["launcher"], dry_run=own["dry_run"])
    if own["dry_run"]:
        return status

    table = collect_table(spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"], expected=plan.digests)
    paths = write_tables(table, own["out_dir"], force=own["force"])
    print(to_markdown(table))
    if own["wandb"]:
        log_wandb(table, project=own["wandb_project"])
    print(f"{spec.name} ({table.scale}, seeds {', '.join(map(str, table.seeds))}), one line per row:")
    print("\n".join(f"  {line}" for line in summary_lines(table)))
    where = "" if table.complete or own["force"] else " (not complete: beside the results, not over them; force=true writes over them)"
    print(f"wrote {', '.join(str(p) for p in paths.values())}{where}")
    if status:
        log.error("some runs failed (exit %d); their rows are marked in the table", status)
    return status


def main(argv: list[str] | None = None) -> int:
    """``reproduce.py key=value ...``; returns the exit status (2: a user error, 130: interrupted)."""
    return run_program("reproduce.py", _main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
