"""Train a teacher or a (distilled) student: one run, or a Hydra multirun sweep.

    python scripts/train.py train=teacher                       # a teacher at smoke scale
    python scripts/train.py teacher.checkpoint=PATH             # a DFD student from that teacher
    python scripts/train.py -m distill=dfd region.hd=mse,tf region.ld=mse,none teacher.checkpoint=PATH

Returns the run's objective (``trainer.objective``, default: the task's primary metric) to a sweeper.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dfd.engine.config import CONF_DIR, load_config, register_configs
from dfd.engine.rows import register_rows
from dfd.engine.runinfo import experiment_info, write_failure
from dfd.engine.train import objective, run_training
from dfd.results.spec import load_all_specs

register_configs()
register_rows(load_all_specs())  # every paper table row as `+row=table<N>_<row id>`


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = load_config(cfg)
        record = run_training(config, run_dir)
    except Exception as err:
        write_failure(run_dir, err, experiment_info(cfg))
        raise
    return objective(config, record)


if __name__ == "__main__":
    main()
