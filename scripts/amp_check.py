#!/usr/bin/env python
"""Evaluate checkpoints in fp32 and under bf16 autocast, and print the differences as a Markdown table.

    python scripts/amp_check.py CHECKPOINT [CHECKPOINT ...] [device=cpu|cuda] [out=DIR]

Each checkpoint is evaluated twice on its run's validation set (``trainer.amp=off`` and ``trainer.amp=bf16``);
the evaluations are kept under ``out`` (default: a temporary directory). ``trainer.amp=bf16`` must leave the
metrics of a trained checkpoint within about 0.1 of fp32's (docs/choices.md, "Mixed precision").
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dfd.engine.config import TrainerConfig  # noqa: E402
from dfd.engine.evaluate import evaluate_checkpoint  # noqa: E402

SHOWN = ("bbox/AP", "bbox/AP75", "bbox/APs", "keypoints/AP", "seg/mIoU")


def compare(path: str, device: str, out: Path) -> list[str]:
    """One table row per metric of ``SHOWN`` the checkpoint reports: fp32, bf16 and their difference."""
    metrics = {}
    for amp in ("off", "bf16"):
        trainer = TrainerConfig(device=device, amp=amp, progress=False)
        record = evaluate_checkpoint(path, out / f"{len(list(out.iterdir()))}_{amp}", trainer=trainer)
        metrics[amp] = record["metrics"]
    return [f"| {path} | {key} | {metrics['off'][key]:.2f} | {metrics['bf16'][key]:.2f} | "
            f"{metrics['bf16'][key] - metrics['off'][key]:+.2f} |"
            for key in SHOWN if metrics["off"].get(key) is not None]


def main(argv: list[str]) -> int:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    paths = [arg for arg in argv if "=" not in arg]
    if not paths or set(options) - {"device", "out"}:
        raise SystemExit(__doc__)
    out = Path(options.get("out") or tempfile.mkdtemp(prefix="amp_check_"))
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| checkpoint | metric | fp32 | bf16 | bf16 − fp32 |", "|---|---|---:|---:|---:|"]
    for path in paths:
        lines += compare(path, options.get("device", "cpu"), out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
