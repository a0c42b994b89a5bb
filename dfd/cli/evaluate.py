"""Evaluate a checkpoint a training run wrote (teacher or student) on its validation set.

    python scripts/evaluate.py checkpoint=runs/smoke/demo/dfd/checkpoints/last.pth
    python scripts/evaluate.py checkpoint=PATH data.root=/data/coco trainer.amp=off hydra.run.dir=runs/eval/x

The model, data and evaluation settings are the run's (stored in the checkpoint); ``trainer.*``
(device, amp) applies as in training, and ``data.root``, ``data.eval_batch_size``, ``data.num_workers``
may be changed. Writes ``metrics.json`` in ``hydra.run.dir`` (default ``<runs_root>/eval/<time>``).
A user error (a missing or foreign checkpoint, data not found, ...) prints one message and exits with
status 1 (``HYDRA_FULL_ERROR=1`` for the traceback).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from dfd.engine.config import CONF_DIR, TrainerConfig, register_configs
from dfd.engine.evaluate import evaluate_checkpoint

from .common import USER_ERRORS, UserError, full_errors


@dataclass
class EvalDataConfig:
    """What may differ from the run's data config (None keeps the run's value)."""

    kind: Optional[str] = None
    root: Optional[str] = None
    eval_batch_size: Optional[int] = None
    num_workers: Optional[int] = None


@dataclass
class EvaluateConfig:
    checkpoint: str = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    overwrite: bool = False  # replace a metrics.json already in hydra.run.dir
    runs_root: str = "runs"


register_configs()
ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    conf: EvaluateConfig = OmegaConf.to_object(cfg)
    try:
        evaluate_checkpoint(conf.checkpoint, Path(HydraConfig.get().runtime.output_dir), trainer=conf.trainer,
                            data=vars(conf.data), overwrite=conf.overwrite)
    except USER_ERRORS as err:
        if full_errors():
            raise
        raise UserError(f"error: {err}") from err


if __name__ == "__main__":
    main()
