#!/usr/bin/env python
"""Train a teacher or a (distilled) student: one run, or a Hydra multirun sweep.

    python scripts/train.py train=teacher                       # a teacher at smoke scale
    python scripts/train.py teacher.checkpoint=PATH             # a DFD student from that teacher
    python scripts/train.py -m distill=dfd region.hd=mse,tf region.ld=mse,none teacher.checkpoint=PATH
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dfd.engine.config import register_configs  # noqa: E402
from dfd.engine.rows import register_rows  # noqa: E402
from dfd.engine.runinfo import write_failure  # noqa: E402
from dfd.engine.train import experiment_info, run_training  # noqa: E402
from dfd.results.spec import load_all_specs  # noqa: E402

register_configs()
register_rows(load_all_specs())  # every paper table row as `+row=table<N>_<row id>`


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        record = run_training(cfg, run_dir)
    except Exception as err:
        write_failure(run_dir, err, experiment_info(cfg))
        raise
    return (record.get("metrics") or {}).get("bbox/AP")


if __name__ == "__main__":
    main()
