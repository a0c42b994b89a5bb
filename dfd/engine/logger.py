"""Run logging: training curves in the run directory, and W&B when asked for."""
from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfd.rundir import HISTORY_FILE, WANDB_ID_FILE, atomic_write_text

log = logging.getLogger(__name__)


class RunLogger:
    """Appends every logged step to ``<run dir>/history.jsonl``; mirrors it to W&B if enabled.

    W&B runs are grouped by table and tagged by method and row, so the dashboard
    filters into each table; offline mode needs no account (``wandb sync`` later). Online, a
    server that does not answer within ``init_timeout`` seconds is given up: the run logs
    offline instead and says so.
    """

    def __init__(self, run_dir: Path, cfg: Mapping[str, Any] | None = None, *, kind: str = "none", project: str = "dfd",
                 entity: str | None = None, mode: str = "offline", name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, enabled: bool = True, init_timeout: float = 60.0) -> None:
        self.enabled = enabled
        self.history = run_dir / HISTORY_FILE
        self.wandb_run = None
        if enabled and kind == "wandb" and mode != "disabled":
            self.wandb_run = _init_wandb(run_dir, mode, init_timeout, project=project, entity=entity, config=dict(cfg or {}),
                                         name=name, group=group, tags=tags or None)

    @classmethod
    def for_run(cls, run_dir: Path, cfg: Any, plain: Mapping[str, Any], enabled: bool = True) -> "RunLogger":
        """The logger of a training run: W&B run named by table/row/seed, grouped by table, tagged."""
        from .runinfo import experiment_info

        exp = experiment_info(cfg)
        name = f"table{exp['table']}-{exp['row']}-seed{exp['seed']}" if exp["table"] is not None else f"{exp['role']}-{run_dir.name}"
        tags = [*exp["methods"], exp["role"], f"scale:{exp['scale']}", *([f"row:{exp['row']}"] if exp["row"] else []), *cfg.logger.tags]
        lg = cfg.logger
        return cls(run_dir, plain, kind=lg.kind, project=lg.project, entity=lg.entity, mode=lg.mode, name=name,
                   group=f"table{exp['table']}" if exp["table"] else None, tags=tags, enabled=enabled,
                   init_timeout=lg.init_timeout)

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


def _init_wandb(run_dir: Path, mode: str, init_timeout: float, **kwargs: Any) -> Any:
    """``wandb.init`` in ``mode``; online, a server silent for ``init_timeout`` seconds means offline instead."""
    import wandb

    common = dict(dir=str(run_dir), resume="allow", id=_wandb_id(run_dir), **kwargs)
    try:
        return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **common)
    except Exception as err:  # wandb raises CommError, UsageError, ... depending on what failed
        if mode != "online":
            raise
        log.warning("W&B online did not start within logger.init_timeout=%ss (%s: %s); logging offline instead, "
                    "`make wandb-sync` (wandb sync %s/wandb/offline-run-*) uploads it later",
                    init_timeout, type(err).__name__, str(err).splitlines()[0] if str(err) else "", run_dir)
        wandb.teardown()  # the W&B service still holds the run id of the failed start: begin afresh
        return wandb.init(mode="offline", **common)


def _wandb_id(run_dir: Path) -> str:
    """A stable W&B id per run directory, so a resumed run continues the same W&B run."""
    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(6)  # W&B ids are [a-z0-9]; written once per run directory
    atomic_write_text(id_file, run_id + "\n")
    return run_id
