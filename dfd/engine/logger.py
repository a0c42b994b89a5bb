"""Run logging: training curves in the run directory, and W&B when asked for."""
from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfd.rundir import HISTORY_FILE, WANDB_ID_FILE

log = logging.getLogger(__name__)


class RunLogger:
    """Appends every logged step to ``<run dir>/history.jsonl``; mirrors it to W&B if enabled.

    W&B runs are grouped by table and tagged by method and row, so the dashboard
    filters into each table; offline mode needs no account (``wandb sync`` later).
    """

    def __init__(self, run_dir: Path, cfg: Mapping[str, Any] | None = None, *, kind: str = "none", project: str = "dfd",
                 entity: str | None = None, mode: str = "offline", name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.history = run_dir / HISTORY_FILE
        self.wandb_run = None
        if enabled and kind == "wandb" and mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=project, entity=entity, mode=mode, dir=str(run_dir), config=dict(cfg or {}),
                name=name, group=group, tags=tags or None, resume="allow", id=_wandb_id(run_dir),
            )

    @classmethod
    def for_run(cls, run_dir: Path, cfg: Any, plain: Mapping[str, Any], enabled: bool = True) -> "RunLogger":
        """The logger of a training run: W&B run named by table/row/seed, grouped by table, tagged."""
        from .runinfo import experiment_info

        exp = experiment_info(cfg)
        name = f"table{exp['table']}-{exp['row']}-seed{exp['seed']}" if exp["table"] is not None else f"{exp['role']}-{run_dir.name}"
        tags = [*exp["methods"], exp["role"], f"scale:{exp['scale']}", *([f"row:{exp['row']}"] if exp["row"] else []), *cfg.logger.tags]
        lg = cfg.logger
        return cls(run_dir, plain, kind=lg.kind, project=lg.project, entity=lg.entity, mode=lg.mode, name=name,
                   group=f"table{exp['table']}" if exp["table"] else None, tags=tags, enabled=enabled)

    def log(self, values: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in values.items()}
        with self.history.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in values.items():
                self.wandb_run.summary[k] = v

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _wandb_id(run_dir: Path) -> str:
    """A stable W&B id per run directory, so a resumed run continues the same W&B run."""
    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(6)  # W&B ids are [a-z0-9]; written once per run directory
    id_file.write_text(run_id + "\n")
    return run_id
