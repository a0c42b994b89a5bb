#!/usr/bin/env python
"""Measure each distillation term against the task loss at the start of training.

    python scripts/calibrate_weights.py teacher.checkpoint=PATH [training overrides ...] [batches=10]

Runs the first ``batches`` batches of the run the overrides describe (no update) and prints,
per term, its mean value with the configured weights, its ratio to the task loss, and the
weight that would make it equal to the task loss; then the gain per method that
``distill.start_ratio`` (1 when unset) would apply (dfd/engine/calibrate.py). This is how the
defaults of docs/choices.md were checked; rerun it for your teacher, student and data.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import functools  # noqa: E402

from torch.utils.data import DataLoader  # noqa: E402

from dfd.data import EpochBatchSampler, collate  # noqa: E402
from dfd.engine.calibrate import measure_terms, start_gains  # noqa: E402
from dfd.engine.config import compose_config, load_config  # noqa: E402
from dfd.engine.setup import amp_dtype, setup_process  # noqa: E402
from dfd.engine.train import build_run  # noqa: E402

# where each term's weight lives in the config
WEIGHT_KEYS = {"dfd/hd": "region.alpha", "dfd/ld": "region.beta", "mse/mse": "distill.mse.weight", "mgd/mgd": "distill.mgd.alpha",
               "pkd/pkd": "distill.pkd.weight", "cwd/cwd": "distill.cwd.weight", "fgd/fg": "distill.fgd.alpha_fgd",
               "fgd/bg": "distill.fgd.beta_fgd", "fgd/attention": "distill.fgd.gamma_fgd", "fgd/global": "distill.fgd.lambda_fgd"}


def main(argv: list[str]) -> int:
    batches = 10
    overrides = []
    for arg in argv:
        if arg.startswith("batches="):
            batches = int(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    cfg = load_config(compose_config(overrides))
    if not cfg.distilling:
        raise SystemExit("calibrate_weights.py: choose a distillation run (distill=dfd, ...) of train=student")
    info, device = setup_process(cfg)
    run = build_run(cfg, Path("."), info, device)
    sampler = EpochBatchSampler(len(run.train_set), cfg.data.batch_size, seed=cfg.seed, epoch=0)
    loader = DataLoader(run.train_set, batch_sampler=sampler, collate_fn=collate)
    task, means = measure_terms(run.distiller, loader, batches, device, amp_dtype(cfg.trainer.amp, device, run.family), info)
    print(f"task loss (mean of up to {batches} batches): {task:.4g}")
    print(f"{'term':<16}{'value':>12}{'÷ task':>10}   weight for value = task loss")
    for term, value in means.items():
        key = WEIGHT_KEYS.get(term)
        weight = float(functools.reduce(getattr, key.split("."), cfg)) if key else None
        suggestion = f"{key}={weight * task / value:.3g}" if key and value > 0 else "—"
        print(f"{term:<16}{value:>12.4g}{value / task:>10.3g}   {suggestion}")
    ratio = cfg.distill.start_ratio if cfg.distill.start_ratio is not None else 1.0
    gains = ", ".join(f"{m} {g:.3g}" for m, g in start_gains(task, means, ratio).items())
    print(f"gains that distill.start_ratio={ratio:g} would apply: {gains}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
