"""Train a teacher or a (distilled) student: one run, or a Hydra multirun sweep.

    python scripts/train.py train=teacher                       # a teacher at smoke scale
    python scripts/train.py teacher.checkpoint=PATH             # a DFD student from that teacher
    python scripts/train.py -m distill=dfd region.hd=mse,tf region.ld=mse,none teacher.checkpoint=PATH

Returns the run's objective (``trainer.objective``, default: the task's primary metric) to a sweeper.
A user error (a bad value, missing data, a run directory in use, ...) prints one message and exits
with status 1 (``HYDRA_FULL_ERROR=1`` for the traceback); a config error leaves no run directory
behind. Ctrl-C says what the last checkpoint holds and the command that resumes the run.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dfd.engine.config import CONF_DIR, load_config, register_configs
from dfd.engine.rows import register_rows
from dfd.engine.train import objective, run_training
from dfd.results.spec import load_all_specs

from .common import USER_ERRORS, UserError, command_line, full_errors

register_configs()
register_rows(load_all_specs())  # every paper table row as `+row=table<N>_<row id>`

log = logging.getLogger(__name__)


def _resume_command(run_dir: Path) -> str:
    """The command that resumes this run: the same one, in the same directory."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        given = any(o.startswith("hydra.sweep.dir=") for o in hc.overrides.hydra)
        return command_line() + ("" if given else f" hydra.sweep.dir={hc.sweep.dir}")
    given = any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
    return command_line() + ("" if given else f" hydra.run.dir={run_dir}")


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = load_config(cfg)
        record = run_training(config, run_dir)
    except USER_ERRORS as err:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # the empty directory Hydra made for a run that never started
        if full_errors():
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("%s: %s", run_dir, err)  # each job's error as it happens; Hydra reports the first at the end
        raise UserError(f"error: {err}") from err
    except KeyboardInterrupt:
        if full_errors():
            raise
        log.warning("to resume: %s", _resume_command(run_dir))
        raise SystemExit(130) from None
    return objective(config, record)


if __name__ == "__main__":
    main()
