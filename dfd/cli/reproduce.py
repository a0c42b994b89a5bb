"""Reproduce one paper table: train what it needs, run every row as a Hydra multirun, collect it.

    python scripts/reproduce.py table=5 scale=smoke
    python scripts/reproduce.py table=5 scale=full data_root=/data/coco teacher=/ckpt/rx101.pth seeds=[0,1,2]
    python scripts/reproduce.py table=1 scale=full launcher=submitit_slurm hydra.launcher.partition=gpu ...

Own keys: table (1-7), scale (smoke|full), seeds (list), runs_root (runs), data_root (a COCO
layout; default: the synthetic set), teacher (a checkpoint for every teacher of the table, or
teachers.<option>=PATH for the teacher option <option> of conf/teacher/ only), launcher (basic|submitit_local|submitit_slurm), wandb (true:
log runs and the table to W&B), wandb_project, out_dir (experiments/results), dry_run (print the
commands only). Every other key=value is passed to each training run, teachers included (e.g.
trainer.max_iters=5, teacher.backbone=resnet50, student.fpn_channels=128, hydra.launcher.* settings).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from dfd.engine.config import compose_config, register_configs
from dfd.engine.rows import register_rows
from dfd.engine.sweep import LAUNCHERS, plan_table, run_plan
from dfd.results import collect_table, load_spec, log_wandb, to_markdown, write_tables
from dfd.results.spec import load_all_specs

OWN = {"table": None, "scale": "smoke", "seeds": [0], "runs_root": "runs", "data_root": None, "teacher": None,
       "launcher": "basic", "wandb": False, "wandb_project": "dfd", "out_dir": "experiments/results", "dry_run": False}


def parse(argv: list[str]) -> tuple[dict, dict[str, str], list[str]]:
    own, teachers, forward = dict(OWN), {}, []
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"reproduce.py: expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        if key.startswith("teachers."):
            teachers[key.split(".", 1)[1]] = value
        elif key in own:
            own[key] = yaml.safe_load(value) if key not in ("runs_root", "data_root", "teacher", "out_dir") else value
        else:
            forward.append(arg)
    if own["table"] is None:
        raise SystemExit("reproduce.py: table=N is required (1-7)")
    if own["scale"] not in ("smoke", "full"):
        raise SystemExit(f"reproduce.py: scale={own['scale']!r}; expected smoke or full")
    if own["launcher"] not in LAUNCHERS:
        raise SystemExit(f"reproduce.py: launcher={own['launcher']!r}; expected one of {', '.join(LAUNCHERS)}")
    seeds = own["seeds"]
    own["seeds"] = [int(s) for s in (seeds if isinstance(seeds, list) else [seeds])]
    if own["teacher"]:
        teachers["*"] = own["teacher"]
    for option, path in teachers.items():
        if not Path(path).is_file():
            raise SystemExit(f"reproduce.py: {'teacher' if option == '*' else 'teachers.' + option}={path!r}: file does not exist")
    if own["data_root"] and not Path(own["data_root"]).is_dir():
        raise SystemExit(f"reproduce.py: data_root={own['data_root']!r}: directory does not exist")
    return own, teachers, forward


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    own, teachers, forward = parse(argv)
    spec = load_spec(own["table"])
    register_configs()
    register_rows(load_all_specs())
    base = [f"scale={own['scale']}", f"runs_root={own['runs_root']}"]
    if own["data_root"]:
        base += ["data=coco", f"data.root={own['data_root']}"]
    if own["wandb"]:
        base += ["logger=wandb", f"logger.project={own['wandb_project']}"]
    base += forward

    plan = plan_table(
        spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"], base=base,
        compose=lambda ov: compose_config(ov, return_hydra_config=True), teacher_checkpoints=teachers,
    )
    logging.info("%s at %s scale: %d rows to run, %d finished, %d not implemented, teachers to train: %s",
                 spec.name, own["scale"], sum(map(len, plan.to_run.values())), len(plan.finished),
                 len(plan.not_implemented), [t for t, p in plan.teachers.items() if not p.finished] or "none")
    status = run_plan(plan, seeds=own["seeds"], base=base, launcher=own["launcher"], dry_run=own["dry_run"])
    if own["dry_run"]:
        return status

    table = collect_table(spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"])
    paths = write_tables(table, own["out_dir"])
    print(to_markdown(table))
    logging.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if own["wandb"]:
        log_wandb(table, project=own["wandb_project"])
    if status:
        logging.error("some runs failed (exit %d); their rows are marked in the table", status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
