"""Paper tables as sweeps: planning, the reproduce driver end to end, plain multiruns, launchers."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY

from dfd.engine.config import compose_config
from dfd.engine.sweep import plan_table, rows_command
from dfd.results import load_spec
from dfd.rundir import NOT_IMPLEMENTED_FILE


def _compose(overrides):
    return compose_config(overrides, return_hydra_config=True)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "DFD_CACHE": str(cache)}


def test_plan_separates_runnable_from_not_implemented(tmp_path: Path) -> None:
    """Every row is either to run (with the teacher it needs) or not implemented; which families are built grows."""
    spec = load_spec(2)
    plan = plan_table(spec, runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose)
    runnable = [r for rows in plan.to_run.values() for r in rows]
    assert sorted(runnable + list(plan.not_implemented)) == sorted(r.id for r in spec.rows) and not plan.finished
    assert {"retinanet_student", "retinanet_fgd", "retinanet_mgd", "retinanet_pkd", "retinanet_ours", "faster_rcnn_student"} <= set(runnable)
    alone = {r.id for r in spec.rows if "distill=none" in r.overrides}
    assert set(plan.to_run[None]) == alone - set(plan.not_implemented)  # no teacher needed
    assert all("is not implemented" in why for why in plan.not_implemented.values())
    assert any(name.startswith("retinanet_x101_64x4d-") for name in plan.teachers)
    assert set(plan.digests) == set(runnable)  # what each run must be, for the collector too


def test_one_teacher_is_shared_by_tables(tmp_path: Path) -> None:
    names = {t for n in (1, 4, 5) for t in plan_table(load_spec(n), runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose).teachers}
    assert len(names) == 1


def test_rows_command_is_one_multirun_over_rows_and_seeds(tmp_path: Path) -> None:
    plan = plan_table(load_spec(5), runs_root=tmp_path, scale="smoke", seeds=[0, 1], base=["scale=smoke"], compose=_compose)
    (teacher,) = plan.to_run
    cmd = rows_command(plan, teacher, [0, 1], ["scale=smoke"], "submitit_local")
    assert cmd[1:4] == ["-m", "dfd.cli.train", "-m"] and "hydra/launcher=submitit_local" in cmd and "seed=0,1" in cmd
    assert "hydra.sweep.subdir=${experiment.row}/seed${seed}" in cmd
    rows = next(c for c in cmd if c.startswith("+row=")).split("=", 1)[1].split(",")
    assert rows == [f"table5_{r.id}" for r in load_spec(5).rows]
    assert any(c.startswith("teacher.checkpoint=") and c.endswith("checkpoints/last.pth") for c in cmd)


@pytest.mark.slow
def test_reproduce_a_table_end_to_end(tmp_path: Path, data_cache: Path) -> None:
    """make reproduce-table-4 in miniature: teacher, five rows, collected table; a rerun redoes nothing."""
    out = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "table=4", "scale=smoke", f"runs_root={tmp_path / 'runs'}",
           f"out_dir={out}", *TINY[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((out / "table4.csv").open()))
    assert [r["row_id"] for r in rows] == [r.id for r in load_spec(4).rows]
    assert all(r["status"] == "ok" and r["n"] == "1" and r["mAP_paper"] and r["mAP_mean"] != "" for r in rows), rows
    md = (out / "table4.md").read_text()
    assert "NOT comparable" in md and "40.3" in md and (out / "table4.tex").is_file()
    for r in load_spec(4).rows:
        metrics = json.loads((tmp_path / "runs" / "smoke" / "table4" / r.id / "seed0" / "metrics.json").read_text())
        assert metrics["experiment"]["row"] == r.id and metrics["experiment"]["table"] == 4
        losses = metrics["losses"]
        for method in metrics["experiment"]["methods"]:
            assert any(k.startswith(f"distill/{method}/") for k in losses), (r.id, losses)  # each term under its name
    teachers = [p for p in (tmp_path / "runs" / "smoke" / "teachers").iterdir() if p.is_dir()]
    assert len(teachers) == 1 and (teachers[0] / "metrics.json").is_file()

    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 rows to run, 5 finished" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")} == stamp


NOT_BUILT_SPEC = """
number: 9
title: A table with a row of a family not built
metrics: {mAP: bbox/AP}
labels: [Method]
groups:
  - name: "RetinaNet"
    overrides: [teacher=retinanet_x101_64x4d, student=retinanet_r50]
    rows:
      - {id: built, labels: {Method: student}, overrides: [distill=none], paper: {mAP: 36.5}}
      - {id: unbuilt, labels: {Method: DETR}, overrides: [distill=none, student.family=detr], paper: {mAP: 42.0}}
"""


def test_not_implemented_rows_are_marked_and_shown(tmp_path: Path) -> None:
    """A row naming a component not built is planned as not implemented, marked in its directory, collected without a
    number, and its marker goes once the row runs."""
    from dfd.engine.rows import register_rows
    from dfd.engine.sweep import mark_not_implemented
    from dfd.results import collect_table, write_tables

    path = tmp_path / "table9.yaml"
    path.write_text(NOT_BUILT_SPEC, encoding="utf-8")
    spec = load_spec(path)
    register_rows([spec])
    runs = tmp_path / "runs"
    plan = plan_table(spec, runs_root=runs, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose)
    assert list(plan.not_implemented) == ["unbuilt"] and "student.family='detr' is not implemented" in plan.not_implemented["unbuilt"]
    assert plan.to_run == {None: ["built"]}
    mark_not_implemented(plan)
    marker = json.loads((runs / "smoke" / "table9" / "unbuilt" / NOT_IMPLEMENTED_FILE).read_text())
    assert "is not implemented" in marker["error"]
    write_tables(collect_table(spec, runs, "smoke", [0], expected=plan.digests), tmp_path / "out", force=True)
    rows = {r["row_id"]: r for r in csv.DictReader((tmp_path / "out" / "table9.csv").open())}
    assert rows["unbuilt"]["status"] == "not_implemented" and rows["unbuilt"]["mAP_mean"] == ""  # no number without a run
    assert rows["built"]["status"] == "missing"


@pytest.mark.slow
def test_plain_sweep_gives_one_run_per_combination(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", *TINY, "distill=dfd", "region.hd=mse,tf", "region.ld=mse,none",
           f"teacher.checkpoint={teacher_checkpoint}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = set()
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        cfg = yaml.safe_load((job / "config.yaml").read_text())  # written by the run (no .hydra/ folder)
        assert (job / "metrics.json").is_file()
        seen.add((cfg["region"]["hd"], cfg["region"]["ld"]))
    assert seen == {("mse", "mse"), ("mse", "none"), ("tf", "mse"), ("tf", "none")}


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path: Path, data_cache: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", "hydra/launcher=submitit_local", *TINY, "distill=none",
           "seed=0,1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=seed${seed}", "hydra.launcher.timeout_min=10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        record = json.loads((sweep / f"seed{seed}" / "metrics.json").read_text())
        assert record["experiment"]["seed"] == seed and record["status"] == "finished"
    assert (sweep / ".submitit").is_dir()


def test_teacher_and_student_overrides_reach_every_run(tmp_path: Path) -> None:
    """reproduce.py teacher.backbone=... is an override of the runs (teachers included), not a checkpoint path."""
    from dfd.cli.common import UsageError
    from dfd.cli.reproduce import parse

    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes(b"x")
    own, teachers, forward = parse(["table=5", "teacher.backbone=resnet50", "student.fpn_channels=32",
                                    f"teachers.retinanet_x101_64x4d={ckpt}"])
    assert forward == ["teacher.backbone=resnet50", "student.fpn_channels=32"]
    assert teachers == {"retinanet_x101_64x4d": str(ckpt)}
    base = ["scale=smoke", *forward]
    plan = plan_table(load_spec(5), runs_root=tmp_path, scale="smoke", seeds=[0], base=base, compose=_compose)
    (teacher,) = plan.teachers.values()
    assert "teacher.backbone=resnet50" in teacher.overrides
    default = plan_table(load_spec(5), runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose)
    assert set(default.teachers).isdisjoint(plan.teachers)  # another teacher, another directory
    cmd = rows_command(plan, next(iter(plan.to_run)), [0], base, "basic")
    assert "teacher.backbone=resnet50" in cmd and "student.fpn_channels=32" in cmd
    with pytest.raises(UsageError, match="teachers.x="):
        parse(["table=5", f"teachers.x={tmp_path / 'missing.pth'}"])


def test_real_data_is_swapped_in_per_row(tmp_path: Path) -> None:
    """data_root=PATH gives every row its real twin at PATH; the digests are those of `data=coco data.root=PATH`."""
    from dfd.cli.common import UsageError, data_roots
    from dfd.engine.sweep import SweepError, real_data_overrides, row_batches

    coco = tmp_path / "coco"
    coco.mkdir()
    roots = data_roots(str(coco))
    assert roots["coco"] == str(coco)
    spec = load_spec(5)
    plan = plan_table(spec, runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose, roots=roots)
    assert all(plan.data[r.id] == ["data=coco", f"data.root={coco}"] for r in spec.rows)
    old_style = plan_table(spec, runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke", "data=coco", f"data.root={coco}"],
                           compose=_compose)
    assert plan.digests == old_style.digests and plan.digests != plan_table(
        spec, runs_root=tmp_path, scale="smoke", seeds=[0], base=["scale=smoke"], compose=_compose).digests
    (teacher,) = plan.teachers.values()
    assert teacher.overrides.count("data=coco") == 1
    (teacher_name,) = plan.to_run
    assert row_batches(plan, teacher_name) == [plan.to_run[teacher_name]]
    cmd = rows_command(plan, teacher_name, [0], ["scale=smoke"], "basic")
    assert "data=coco" in cmd and f"data.root={coco}" in cmd
    with pytest.raises(SweepError, match=r"row 'r' trains on coco data \(data=coco\): give its directory"):
        real_data_overrides("r", [], {"cityscapes": str(coco)})
    with pytest.raises(UsageError, match=r"data_root\.lvis: 'lvis' is not a real data kind"):
        data_roots(f"{{lvis: {coco}}}")
    with pytest.raises(UsageError, match=r"data_root='.*missing': directory does not exist"):
        data_roots(str(tmp_path / "missing"))
    assert data_roots(None) == {} and data_roots(f"{{coco: {coco}}}") == {"coco": str(coco)}


def test_each_synthetic_data_option_has_its_real_twin() -> None:
    """REAL_DATA swaps a synthetic data option for the option of its kind's real twin (the registry's)."""
    from dfd.data import DATASETS
    from dfd.engine.sweep import REAL_DATA, option_kind

    for synthetic, real in REAL_DATA.items():
        assert DATASETS[option_kind(synthetic)].twin == option_kind(real), (synthetic, real)
    used = {ov.split("=", 1)[1] for n in range(1, 8) for r in load_spec(n).rows for ov in r.overrides if ov.startswith("data=")}
    assert used <= set(REAL_DATA), used - set(REAL_DATA)  # every table names synthetic data, which DATA_ROOT can swap
