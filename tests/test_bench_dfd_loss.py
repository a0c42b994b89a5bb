"""scripts/bench_dfd_loss.py runs and compares equal losses (its timings are printed, never asserted)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = str(REPO / "scripts" / "bench_dfd_loss.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_bench_dfd_loss_full_scale_shapes_few_channels() -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "channels=4", "batch=1", "repeats=1", "warmup=0", "bound=1"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sparse / dense |" in proc.stdout and "| P7 | 7x11 |" in proc.stdout
    assert "| sparse, matrix products alone / dense |" in proc.stdout
    rel = float(proc.stdout.split("relative difference ")[1].split(")")[0])
    assert rel < 1e-4


def test_bench_dfd_loss_sweep_and_bad_argument() -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "sweep=1", "channels=4", "batch=1", "repeats=1", "warmup=0"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n| 0.") == 7
    bad = subprocess.run([sys.executable, SCRIPT, "repeat=3"], capture_output=True, text=True, timeout=60, env=ENV)
    assert bad.returncode != 0 and "repeat=3" in bad.stderr


@pytest.mark.parametrize("arg", ["sparse_max_fraction=0"])
def test_bench_dfd_loss_dense_only(arg: str) -> None:
    proc = subprocess.run([sys.executable, SCRIPT, arg, "channels=4", "batch=1", "repeats=1", "warmup=0"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sparse |" not in proc.stdout.split("| level |")[1].split("| variant |")[0]


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["compile=1", "channels_last=1"])
def test_bench_dfd_loss_options_compute_the_same_loss(arg: str) -> None:
    proc = subprocess.run([sys.executable, SCRIPT, arg, "channels=4", "batch=1", "repeats=1", "warmup=0"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if arg == "compile=1":
        assert "| dense compiled / dense |" in proc.stdout
    rel = float(proc.stdout.split("relative difference ")[1].split(")")[0])
    assert rel < 1e-4
