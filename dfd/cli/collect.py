"""Collect a paper table from finished runs into Markdown, CSV and LaTeX (never trains).

    python scripts/collect.py table=5 scale=smoke
    python scripts/collect.py table=2 scale=full seeds=[0,1,2] wandb=true wandb_mode=online
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from dfd.engine.config import CONF_DIR
from dfd.results import collect_table, load_spec, log_wandb, to_markdown, write_tables

log = logging.getLogger(__name__)


def _seeds(value: object) -> list[int]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [int(s) for s in value]
    return [int(value)]  # seeds=0


def _scale(cfg: DictConfig) -> str:
    """The chosen option of the ``scale`` config group (shared with training)."""
    choice = HydraConfig.get().runtime.choices.get("scale")
    return str(choice if choice is not None else cfg.scale.name)


@hydra.main(config_path=str(CONF_DIR), config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    spec = load_spec(cfg.table, cfg.experiments_dir)
    table = collect_table(spec, runs_root=cfg.runs_root, scale=_scale(cfg), seeds=_seeds(cfg.seeds))
    runs_dir = Path(cfg.runs_root) / table.scale / spec.name
    if not runs_dir.is_dir():
        log.warning("no runs under %s: every row is missing", runs_dir)
    paths = write_tables(table, cfg.out_dir)
    if cfg.print:
        print(to_markdown(table))
    counts: dict[str, int] = {}
    for row in table.rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    log.info("%s (%s, seeds %s): %s", spec.name, table.scale, table.seeds,
             ", ".join(f"{k} {v}" for k, v in counts.items()))
    for path in paths.values():
        log.info("wrote %s", path)
    if cfg.wandb:
        log_wandb(table, project=cfg.wandb_project, mode=cfg.wandb_mode)
        log.info("logged %s to W&B project %r (mode %s)", spec.name, cfg.wandb_project, cfg.wandb_mode)


if __name__ == "__main__":
    main()
