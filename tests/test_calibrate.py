"""distill.start_ratio: one gain per method puts its terms at a chosen ratio to the task loss at the start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, crash_at

from dfd.distill import DistillContext, FeatureDistillation
from dfd.engine import train as train_mod
from dfd.engine.calibrate import measure_terms, start_gains
from dfd.engine.config import ConfigError, load_config, to_plain
from dfd.engine.dist import DistInfo
from dfd.engine.train import build_run, epoch_loader, run_training
from dfd.rundir import config_digest


def test_start_gains_put_each_methods_sum_at_the_ratio() -> None:
    gains = start_gains(2.0, {"dfd/hd": 30.0, "dfd/ld": 10.0, "pkd/pkd": 0.5, "mse/mse": 0.0}, 3.5)
    assert gains == pytest.approx({"dfd": 3.5 * 2.0 / 40.0, "pkd": 3.5 * 2.0 / 0.5, "mse": 1.0})


def _maps(channels: int = 8) -> DistillContext:
    g = torch.Generator().manual_seed(0)
    s = {"p3": torch.randn(2, channels, 6, 6, generator=g)}
    t = {"p3": torch.randn(2, channels, 6, 6, generator=g)}
    return DistillContext(s, t)


def test_gains_scale_one_methods_terms_and_travel_with_its_state() -> None:
    channels = {"p3": (8, 8)}
    torch.manual_seed(0)
    losses = FeatureDistillation({"mse": {}, "pkd": {}}, channels)
    ctx = _maps()
    before = losses(ctx)
    losses.set_gains({"mse": 0.25})
    after = losses(ctx)
    assert torch.allclose(after["mse/mse"], 0.25 * before["mse/mse"]) and torch.equal(after["pkd/pkd"], before["pkd/pkd"])
    assert losses.gain_of("mse") == 0.25 and losses.gain_of("pkd") == 1.0
    with pytest.raises(ValueError, match="no distillation method \\['fgd'\\]"):
        losses.set_gains({"fgd": 2.0})

    torch.manual_seed(0)
    again = FeatureDistillation({"mse": {}, "pkd": {}}, channels)
    again.load_state_dict(losses.state_dict())
    assert again.gain_of("mse") == 0.25
    old = {k: v for k, v in losses.state_dict().items() if k != "gains"}  # a checkpoint from before the gains
    again.load_state_dict(old)
    assert again.gain_of("mse") == 1.0


def test_the_ratio_is_checked_and_kept_out_of_runs_that_do_not_distil() -> None:
    with pytest.raises(ConfigError, match="distill.start_ratio"):
        load_config(compose_config(["scale=smoke", "distill.start_ratio=0"]))
    with pytest.raises(ConfigError, match="distill.calibration_batches"):
        load_config(compose_config(["scale=smoke", "distill.start_ratio=1", "distill.calibration_batches=0"]))

    def digest(*overrides: str) -> str:
        return config_digest(to_plain(load_config(compose_config(["scale=smoke", *overrides]), require_teacher=False)))

    for run in (["train=teacher"], ["distill=none"]):
        assert digest(*run, "distill.start_ratio=2") == digest(*run, "distill.start_ratio=null") == digest(*run, "distill.start_ratio=5")
    assert digest("distill=dfd", "distill.start_ratio=2") != digest("distill=dfd", "distill.start_ratio=5")
    assert digest("distill=dfd", "distill.start_ratio=null", "distill.calibration_batches=9") == digest("distill=dfd", "distill.start_ratio=null")


@pytest.mark.slow
def test_measured_terms_come_to_the_ratio_and_leave_the_run_untouched(teacher_checkpoint: Path, data_cache: Path) -> None:
    cfg = load_config(compose_config([*TINY, "distill=mgd+dfd", f"teacher.checkpoint={teacher_checkpoint}"]))
    run = build_run(cfg, Path("."), DistInfo(), torch.device("cpu"))
    buffers = {k: v.clone() for k, v in run.distiller.named_buffers()}
    rng = torch.get_rng_state()

    def measure() -> tuple[float, dict[str, float]]:
        return measure_terms(run.distiller, epoch_loader(run, 0, 0), 2, run.device, None, run.info)

    task, terms = measure()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in run.distiller.named_buffers())  # BatchNorm statistics included
    run.distiller.losses.set_gains(start_gains(task, terms, 2.0))
    task2, terms2 = measure()  # MGD's random masks are drawn again from the same state: the same terms
    assert task2 == pytest.approx(task, rel=1e-5)
    for method in ("mgd", "dfd"):
        total = sum(v for k, v in terms2.items() if k.startswith(method + "/"))
        assert total / task2 == pytest.approx(2.0, rel=1e-4)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_gains_it_started_with(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*TINY, "distill=dfd", f"teacher.checkpoint={teacher_checkpoint}", "distill.start_ratio=2",
                 "trainer.max_iters=4", "trainer.checkpoint_interval=2", "trainer.evaluate=false"]
    straight = run_training(compose_config(overrides), tmp_path / "straight")
    gain = straight["optimization"]["distill_gains"]["dfd"]
    assert 0 < gain != 1.0

    crash_at(monkeypatch, compose_config(overrides), tmp_path / "resumed", 3)
    calibrations = []
    monkeypatch.setattr(train_mod, "measure_terms", lambda *a, **k: calibrations.append(a) or real_measure(*a, **k))
    resumed = run_training(compose_config(overrides), tmp_path / "resumed")
    assert not calibrations  # the gains came from the checkpoint, not from the weights of iteration 2
    assert resumed["optimization"]["distill_gains"]["dfd"] == gain
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pth", weights_only=True)
    assert float(b["distill"]["gains"][0]) == gain
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["optimization"]["distill_gains"] == {"dfd": gain}


real_measure = measure_terms
