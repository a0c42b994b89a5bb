"""trainer.amp=bf16 against fp32 on a trained checkpoint (issue 8: bf16 must not touch geometry)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dfd.engine.config import TrainerConfig, compose_config
from dfd.engine.evaluate import evaluate_checkpoint
from dfd.engine.train import run_training


@pytest.mark.slow
def test_bf16_moves_a_trained_detector_by_at_most_a_tenth_of_an_ap_point(tmp_path: Path, data_cache: Path) -> None:
    """The smoke teacher trained to the end (the demo's teacher: RetinaNet R34, 256 synthetic images; about two
    minutes on two cores), evaluated on its 64 validation images in fp32 and under bf16 CPU autocast: box AP moves
    by at most 0.1. Four images are too few for that bound (one box crossing an IoU threshold moves AP by ~0.6 there;
    tests/test_models.py checks the boxes themselves instead)."""
    run_training(compose_config(["scale=smoke", "train=teacher", "trainer.progress=false"]), tmp_path / "teacher")
    checkpoint = tmp_path / "teacher" / "checkpoints" / "last.pth"
    ap = {}
    for amp in ("off", "bf16"):
        record = evaluate_checkpoint(checkpoint, tmp_path / f"eval_{amp}", trainer=TrainerConfig(device="cpu", amp=amp, progress=False))
        ap[amp] = record["metrics"]["bbox/AP"]
    print(f"smoke teacher: bbox/AP fp32 {ap['off']:.3f}, bf16 {ap['bf16']:.3f} ({ap['bf16'] - ap['off']:+.3f})")
    assert ap["off"] > 5.0, ap  # a trained detector, not a blank one
    assert abs(ap["bf16"] - ap["off"]) <= 0.1, ap
