"""The helper scripts run (their numbers are not checked: speed is measured, never asserted)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY


@pytest.mark.slow
def test_bench_step_runs_every_method() -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "bench_step.py"), "methods=none,dfd,fgd", "iters=1", "warmup=0",
           "data.min_size=64", "data.max_size=96", "data.batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "methods" not in line] == ["floor", "none", "dfd", "fgd"]
    assert "ratio to floor" in proc.stdout


@pytest.mark.slow
def test_calibrate_weights_reports_each_term(teacher_checkpoint: Path, data_cache: Path) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "calibrate_weights.py"), *TINY, "distill=mgd+dfd",
           f"teacher.checkpoint={teacher_checkpoint}", "batches=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "DFD_CACHE": str(data_cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "region.alpha=" in proc.stdout and "region.beta=" in proc.stdout and "distill.mgd.alpha=" in proc.stdout
