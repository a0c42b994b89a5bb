"""Shared fixtures: composed configs and tiny real runs on tiny synthetic COCO data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dfd.engine.config import CONF_DIR, compose_config, register_configs
from dfd.engine.rows import register_rows
from dfd.models import FAMILIES
from dfd.results.spec import load_all_specs

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR

register_configs()
register_rows(load_all_specs())
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the session (the runs point DFD_CACHE at it)."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DFD_CACHE")
    os.environ["DFD_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("DFD_CACHE", None)
    else:
        os.environ["DFD_CACHE"] = old


DETECTION_TASKS = ("detection", "instance")


def detector_options(role: str) -> dict[str, str]:
    """Every conf/<role>/ option of a registered detector family, ``{option: family}``, in file order (read from
    the options' defaults lists, without composing them)."""
    options: dict[str, str] = {}
    for path in sorted((CONF / role).glob("*.yaml")):
        text = path.read_text()
        for name, family in FAMILIES.items():
            if f"/family/{name}@_here_" in text and family.task in DETECTION_TASKS:
                options[path.stem] = name
    return options


TINY = [
    "scale=smoke",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=8",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "trainer.max_iters=3",
    "trainer.progress=false",
    "schedule.warmup_iters=1",
]


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    """A real teacher checkpoint: 3 iterations of the smoke teacher on tiny data."""
    from dfd.engine.train import run_training

    run_dir = tmp_path_factory.mktemp("teacher")
    run_training(compose_config([*TINY, "train=teacher"]), run_dir)
    return run_dir / "checkpoints" / "last.pth"


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real W&B kept inside ``tmp_path / "wandb_home"``, silent, mode unset, with a fresh service: a
    service an earlier test in this process left keeps its settings (directories)."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    home = tmp_path / "wandb_home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return home


def train_steps(model, batch, opt, steps: int, before_step=None) -> list[float]:
    """Train ``model`` (a TaskModel) ``steps`` times on the one ``batch``; each step's loss. ``before_step(i)`` runs
    first at each step (e.g. a YOLOv6 epoch switch). The overfit tests of every family share it."""
    model.train()
    losses = []
    for i in range(steps):
        if before_step is not None:
            before_step(i)
        loss = sum(model.train_step(batch).losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def evaluate_on_cpu(model, dataset, task: str, batch_size: int = 4, amp=None) -> dict:
    """``evaluate_model`` as the overfit tests run it: one CPU process, no workers, ``amp`` the autocast dtype."""
    from dfd.engine.dist import DistInfo
    from dfd.engine.evaluate import evaluate_model

    return evaluate_model(model, dataset, task, batch_size=batch_size, num_workers=0, device=torch.device("cpu"),
                          amp_dtype=amp, info=DistInfo())


def crash_at(monkeypatch: pytest.MonkeyPatch, cfg, run_dir: Path, iteration: int) -> None:
    """Run ``cfg`` in ``run_dir`` until a simulated Ctrl-C at step ``iteration`` (its periodic checkpoints stay)."""
    from dfd.engine import train as train_mod
    from dfd.engine.train import run_training

    real = train_mod.step

    def crashing(run, model, images, targets, i):
        if i == iteration:
            raise KeyboardInterrupt("simulated crash")
        return real(run, model, images, targets, i)

    with monkeypatch.context() as patch:
        patch.setattr(train_mod, "step", crashing)
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg, run_dir)
