"""Collect a paper table from finished runs into Markdown, CSV and LaTeX (never trains).

    python scripts/collect.py table=5 scale=smoke
    python scripts/collect.py table=2 scale=full seeds=[0,1,2] data_root=/data/coco teacher=/ckpt/t.pth wandb=true

Its keys and their defaults are ``conf/collect.yaml``'s; every other ``key=value`` is an override the
runs were trained with, as for ``scripts/reproduce.py``. A run counts only if it has its row's config
(the digest of the row composed as the sweep composes it, with these overrides): a finished run of
another config is marked ``stale``. Writes ``<out_dir>/table<N>.{md,csv,tex}`` when every row is
complete, else ``<out_dir>/table<N>.partial.{md,csv,tex}`` (``force=true``: over the results anyway).
Into ``experiments/results/`` only from committed code (:func:`refuse_uncommitted`; ``allow_dirty=true``
writes there anyway); any other ``out_dir`` takes them from any code.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from dfd.engine.config import CONF_DIR, compose_config, register_configs
from dfd.engine.rows import register_rows
from dfd.engine.sweep import plan_table
from dfd.results import collect_table, load_spec, log_wandb, summary_lines, to_markdown, write_tables
from dfd.results.spec import load_all_specs

from .common import base_overrides, parse_args, refuse_uncommitted, run_program

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")


def defaults() -> dict:
    """The keys of collect.py and their defaults (``conf/collect.yaml``)."""
    return yaml.safe_load((CONF_DIR / "collect.yaml").read_text(encoding="utf-8"))


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    own, teachers, forward = parse_args(argv, defaults(), table_paths=True, choices={"wandb_mode": WANDB_MODES})
    refuse_uncommitted(own["out_dir"], own["allow_dirty"])
    spec = load_spec(own["table"], own["experiments_dir"])
    register_configs()
    register_rows([*load_all_specs(), spec])
    plan = plan_table(spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"],
                      base=base_overrides(own, forward), compose=lambda ov: compose_config(ov, return_hydra_config=True),
                      teacher_checkpoints=teachers, roots=own["data_root"])
    table = collect_table(spec, runs_root=own["runs_root"], scale=own["scale"], seeds=own["seeds"], expected=plan.digests)
    runs_dir = Path(own["runs_root"]) / table.scale / spec.name
    if not runs_dir.is_dir():
        log.warning("no runs under %s: every row is missing", runs_dir)
    paths = write_tables(table, own["out_dir"], force=own["force"])
    if own["print"]:
        print(to_markdown(table))
    print("\n".join(summary_lines(table)))
    if not table.complete and not own["force"]:
        print(f"{spec.name} is not complete: written beside the results, not over them (force=true writes over them)")
    for path in paths.values():
        print(f"wrote {path}")
    if own["wandb"]:
        log_wandb(table, project=own["wandb_project"], mode=own["wandb_mode"])
        log.info("logged %s to W&B project %r (mode %s)", spec.name, own["wandb_project"], own["wandb_mode"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """``collect.py key=value ...``; exits with status 2 on a user error."""
    code = run_program("collect.py", _main, sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main()
