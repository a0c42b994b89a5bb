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
    cmd = [sys.executable, str(REPO / "scripts" / "bench_step.py"), "methods=none,dfd,fgd,dfd@dense@compiled", "iters=1",
           "warmup=1", "compile_backend=eager", "data.min_size=64", "data.max_size=96", "data.batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "methods" not in line]
    assert rows == ["floor", "none", "dfd", "fgd", "dfd@dense@compiled"]
    bad = subprocess.run([*cmd[:2], "methods=dfd@fast", "iters=1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown flag(s) ['fast']" in bad.stderr + bad.stdout
    assert "ratio to floor" in proc.stdout


@pytest.mark.slow
def test_calibrate_weights_reports_each_term(teacher_checkpoint: Path, data_cache: Path) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "calibrate_weights.py"), *TINY, "distill=mgd+dfd",
           f"teacher.checkpoint={teacher_checkpoint}", "batches=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "DFD_CACHE": str(data_cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "region.alpha=" in proc.stdout and "region.beta=" in proc.stdout and "distill.mgd.alpha=" in proc.stdout
    assert "gains that distill.start_ratio=3.5 would apply: mgd " in proc.stdout


@pytest.mark.slow
def test_amp_check_evaluates_fp32_and_bf16(teacher_checkpoint: Path, data_cache: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "amp_check.py"), str(teacher_checkpoint), f"out={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "DFD_CACHE": str(data_cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[2].strip() for line in proc.stdout.splitlines() if line.startswith(f"| {teacher_checkpoint}")]
    assert rows == ["bbox/AP", "bbox/AP75", "bbox/APs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0_off", "1_bf16"]


def test_demo_table_reports_seeds_and_judges_the_gain_by_their_spread() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo._parse(["seeds=[3,4]", "runs_root=/x", "data.min_size=96"]) == ("/x", [3, 4], ["data.min_size=96"])
    with pytest.raises(SystemExit, match=r"seeds='\[1,1\]' is invalid"):
        demo._parse(["seeds=[1,1]"])

    def metrics(ap: float) -> dict:
        return {"bbox/AP": ap, "bbox/AP50": 2 * ap, "bbox/APs": None, "bbox/APm": ap, "bbox/APl": ap}

    rows = [("teacher", [metrics(20.0)]), ("student", [metrics(5.0), metrics(7.0), metrics(6.0)]),
            ("dfd", [metrics(9.0), metrics(10.0), metrics(11.0)])]
    table = demo.markdown(rows, [("no distillation", 2, 1)])
    assert "| student | 3 | 6.0 ± 1.0 | 12.0 ± 2.0 | — |" in table and "| teacher | 1 | 20.0 | 40.0 |" in table
    assert "AP of DFD against no distillation: +4.0 with a spread of 1.4: beyond the seeds' spread" in table
    close = demo.markdown([("t", [metrics(1.0)]), ("s", [metrics(5.0), metrics(7.0)]), ("d", [metrics(6.5), metrics(7.5)])],
                          [("x", 2, 1)])
    assert "within the seeds' spread" in close
    one = demo.markdown([("t", [metrics(1.0)]), ("s", [metrics(5.0)]), ("d", [metrics(6.0)])], [("x", 2, 1)])
    assert "one seed, no spread" in one
    assert demo.as_long_as_the_teacher(["distill=none"]) == ["schedule.epochs=6", "schedule.steps=[4]"]  # smoke: 3 -> 6
