"""Issue 9, trustworthy runs and tables: each item's reproduction as a test (items 1-12; item 6 is the data layer's)."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose_config

from dfd.engine import sweep as sweep_mod
from dfd.engine import train as train_mod
from dfd.engine.config import load_config, to_plain
from dfd.engine.logger import RunLogger
from dfd.engine.runinfo import describe_model, run_label
from dfd.engine.sweep import plan_table, run_plan
from dfd.engine.train import run_training
from dfd.results import collect_table, load_spec, summary_lines
from dfd.rundir import (
    CHECKPOINT,
    FAILED_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    RunDirBusy,
    RunLock,
    config_diff,
    config_digest,
    path_identity,
    seed_dir,
)

SCRIPTS = REPO / "scripts"


def _compose(overrides):
    return compose_config(overrides, return_hydra_config=True)


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DFD_CACHE": str(cache), **extra}
    if "HYDRA_FULL_ERROR" not in extra:
        env.pop("HYDRA_FULL_ERROR", None)
    return env


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    """A finished TINY run whose directory held the temporary file of a checkpoint write cut short by a kill."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / ".last.pth.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    run_training(compose_config([*TINY, "distill=none"]), run_dir)
    return run_dir


# ----------------------------------------------------------------------------- 1. a row is finished only with its config


def test_1_a_row_counts_only_if_its_run_has_the_rows_config(tmp_path: Path, teacher_checkpoint: Path, data_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's reproduction: a sweep with trainer.max_iters changed must not count the runs of the first."""
    root, spec = tmp_path / "runs", load_spec(5)
    base, given = [*TINY, f"runs_root={root}"], {"*": str(teacher_checkpoint)}
    seed0 = seed_dir(root, "smoke", 5, "tf_mse", 0)
    first = run_training(compose_config([*base, "+row=table5_tf_mse", "seed=0", f"teacher.checkpoint={teacher_checkpoint}"]), seed0)

    plan = plan_table(spec, runs_root=root, scale="smoke", seeds=[0], base=base, compose=_compose, teacher_checkpoints=given)
    assert plan.finished == ["tf_mse"] and not plan.stale and plan.digests["tf_mse"][0] == first["config_digest"]
    rows = {r.spec.id: r for r in collect_table(spec, root, "smoke", [0], expected=plan.digests).rows}
    assert rows["tf_mse"].status == "ok" and rows["tf_mse"].cells["mAP"].values

    # 5. the same teacher file spelled another way is the same config: the finished run is found, not refused
    monkeypatch.chdir(teacher_checkpoint.parents[2])
    relative = "./" + os.path.relpath(teacher_checkpoint)
    again = run_training(compose_config([*base, "+row=table5_tf_mse", "seed=0", f"teacher.checkpoint={relative}"]), seed0)
    assert again["finished_at"] == first["finished_at"]

    changed = [*base, "trainer.max_iters=2"]
    plan2 = plan_table(spec, runs_root=root, scale="smoke", seeds=[0], base=changed, compose=_compose, teacher_checkpoints=given)
    assert "tf_mse" not in plan2.finished and "tf_mse" in plan2.to_run[f"given:{teacher_checkpoint}"]
    assert "trainer.max_iters: 3 -> 2" in plan2.stale["tf_mse"][0]
    table = collect_table(spec, root, "smoke", [0], expected=plan2.digests)
    stale = {r.spec.id: r for r in table.rows}["tf_mse"]
    assert stale.status == "stale" and stale.n_finished == 0 and stale.cells["mAP"].values == [] and not table.complete
    assert any("config digest" in p for p in stale.problems)

    commands: list[list[str]] = []
    monkeypatch.setattr(sweep_mod, "_run", lambda cmd, dry_run: commands.append(cmd) or 0)
    assert run_plan(plan2, seeds=[0], base=changed) == 0
    (moved,) = seed0.parent.glob("seed0.stale-*")  # moved aside, never deleted
    assert not seed0.exists() and json.loads((moved / METRICS_FILE).read_text())["config_digest"] == first["config_digest"]
    (cmd,) = commands
    assert "trainer.max_iters=2" in cmd and any(c.startswith("+row=") and "table5_tf_mse" in c for c in cmd)


def test_1_a_planned_teacher_is_its_config_not_its_file(tmp_path: Path, teacher_checkpoint: Path) -> None:
    """Rows are planned before their teacher exists: the digest a row's run will have, once the planned
    teacher is trained where the plan says, is the digest the plan (and the collector) expects."""
    root = tmp_path / "runs"
    base = [*TINY, f"runs_root={root}"]
    plan = plan_table(load_spec(5), runs_root=root, scale="smoke", seeds=[0], base=base, compose=_compose)
    ((name, teacher),) = plan.teachers.items()
    assert teacher.state == "absent" and plan.to_run == {name: [r.id for r in load_spec(5).rows]}
    shutil.copytree(teacher_checkpoint.parents[1], teacher.run_dir)  # the same teacher config, trained elsewhere
    assert teacher.finished
    cfg = load_config(compose_config([*base, "+row=table5_tf_mse", "seed=0", f"teacher.checkpoint={teacher.checkpoint}"]))
    assert config_digest(to_plain(cfg)) == plan.digests["tf_mse"][0]


# ----------------------------------------------------------------------------- 2. collecting never overwrites results


def test_2_collecting_without_runs_keeps_the_curated_tables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dfd.cli.collect import main

    out = tmp_path / "results"
    shutil.copytree(REPO / "experiments" / "results", out)
    curated = (out / "table5.md").read_bytes()
    args = ["table=5", "scale=smoke", f"runs_root={tmp_path / 'fresh_clone_runs'}", f"out_dir={out}", "print=false"]
    assert main(args) == 0
    assert (out / "table5.md").read_bytes() == curated
    partial = (out / "table5.partial.md").read_text()
    assert "| missing | `tf_mse` |" in partial and (out / "table5.partial.csv").is_file() and (out / "table5.partial.tex").is_file()
    assert "not complete" in capsys.readouterr().out
    assert main([*args, "force=true"]) == 0  # asked for explicitly
    assert (out / "table5.md").read_bytes() != curated and "| missing |" in (out / "table5.md").read_text()


# ----------------------------------------------------------------------------- 3. one run directory, one run


def test_3_default_run_directories_are_unique() -> None:
    a, b = (compose_config(["distill=none"], return_hydra_config=True) for _ in range(2))
    assert a.hydra.run.dir != b.hydra.run.dir and a.hydra.sweep.dir != b.hydra.sweep.dir
    assert a.hydra.run.dir.rsplit("-", 1)[1] == a.hydra.sweep.dir.rsplit("-", 1)[1]  # one id per config, wherever it is used


def test_3_a_second_run_in_a_directory_is_refused_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started_at"]
        start = time.perf_counter()
        with pytest.raises(RunDirBusy, match=rf"{run_dir} is in use by another run \(pid {os.getpid()} on host "):
            run_training(compose_config([*TINY, "distill=none"]), run_dir)
        assert time.perf_counter() - start < 10
        assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # the refused run wrote nothing
    assert list(run_dir.iterdir()) == []  # the lock file goes with its holder


# ----------------------------------------------------------------------------- 4. a refused rerun changes no file


def test_4_a_refused_rerun_leaves_every_file_as_it_was(finished_run: Path, data_cache: Path) -> None:
    before = _snapshot(finished_run)
    cmd = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "distill=none", "seed=1", f"hydra.run.dir={finished_run}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=300)
    assert proc.returncode == 1
    assert "holds a finished run with another config (seed: 0 -> 1)" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(finished_run) == before
    assert not (finished_run / ".hydra").exists() and not (finished_run / FAILED_FILE).exists()


# ----------------------------------------------------------------------------- 5. the same file is the same config


def test_5_paths_are_compared_by_what_they_point_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "x" / "last.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    (tmp_path / "link.pth").symlink_to(ckpt)

    def cfg(checkpoint: str, root: str | None = None) -> dict:
        return {"seed": 0, "teacher": {"checkpoint": checkpoint}, "data": {"kind": "coco", "root": root}}

    spellings = ["runs/x/last.pth", "./runs/x/last.pth", str(ckpt), "runs/../runs/x/last.pth", "link.pth"]
    assert len({config_digest(cfg(s)) for s in spellings}) == 1
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    assert config_digest(cfg(str(other))) != config_digest(cfg(str(ckpt)))
    ckpt.write_bytes(b"retrained")
    assert config_diff(cfg("runs/x/last.pth"), cfg(str(ckpt))) == []
    # a run's checkpoint is that run (its config digest): a retrained teacher of the same config is the same teacher
    run_ckpt = tmp_path / "teacher" / "checkpoints" / "last.pth"
    run_ckpt.parent.mkdir(parents=True)
    run_ckpt.write_bytes(b"a")
    (run_ckpt.parents[1] / METRICS_FILE).write_text(json.dumps({"config_digest": "0123abcd"}))
    assert path_identity(str(run_ckpt)) == "run:0123abcd"
    # data.root: a moved dataset is the same data; changed data is not
    for name, size in [("annotations/instances_train2017.json", 10), ("train2017/1.jpg", 5)]:
        (tmp_path / "coco" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "coco" / name).write_bytes(b"x" * size)
    before = config_digest(cfg(str(ckpt), "coco"))
    shutil.move(tmp_path / "coco", tmp_path / "moved")
    assert config_digest(cfg(str(ckpt), str(tmp_path / "moved"))) == before
    (tmp_path / "moved" / "train2017" / "2.jpg").write_bytes(b"y" * 6)  # another image
    changed = cfg(str(ckpt), str(tmp_path / "moved"))
    assert config_digest(changed) != before
    assert config_diff(changed, changed) == [] and config_diff(cfg(str(ckpt), "x"), changed) == [
        f"data.root: 'x' -> {str(tmp_path / 'moved')!r}"]


# ----------------------------------------------------------------------------- 7. clean user errors


def test_7_user_errors_are_one_message_without_traceback(tmp_path: Path, data_cache: Path) -> None:
    runs = tmp_path / "runs"
    train = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "distill=none", f"runs_root={runs}"]
    proc = subprocess.run([*train, "schedule.optimizer=sgdd"], capture_output=True, text=True, env=_env(data_cache), timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: schedule.optimizer='sgdd' is invalid: expected one of" in proc.stderr
    assert not (runs / "smoke" / "single").exists() or not any((runs / "smoke" / "single").iterdir())  # no run directory left
    # a data error, found once the run has its directory: that directory goes too; the traceback only when asked for
    not_coco = tmp_path / "not_coco"
    not_coco.mkdir()
    full = subprocess.run([*train, "data=coco", f"data.root={not_coco}"], capture_output=True, text=True,
                          env=_env(data_cache, HYDRA_FULL_ERROR="1"), timeout=300)
    assert full.returncode == 1 and "Traceback" in full.stderr, full.stderr
    assert f"DataError: annotation file {not_coco}/annotations/instances_train2017.json does not exist" in full.stderr
    assert not (runs / "smoke" / "single").exists() or not any((runs / "smoke" / "single").iterdir())

    busy = tmp_path / "busy"
    with RunLock(busy):
        cmd = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "distill=none", f"hydra.run.dir={busy}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(data_cache), timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"is in use by another run (pid {os.getpid()} on host" in proc.stderr
        assert [p.name for p in busy.iterdir()] == [LOCK_FILE]


@pytest.mark.parametrize(
    "args, message",
    [
        (["table=9"], "table=9: there is no such table; the tables are 1, 2, 3, 4, 5, 6, 7"),
        (["table=5", "seeds=[a,b]"], "seeds=[a,b] is invalid: expected distinct integers"),
        (["table=5", "seeds=[0,0]"], "seeds=[0,0] is invalid"),
        (["table=5", "scale=medium"], "scale='medium' is invalid: expected one of smoke, bench, full"),
        (["table=5", "dry_run=maybe"], "dry_run='maybe' is invalid: expected true or false"),
        (["table=5", "dry_run=true", "region.hd=tff"], "region.hd='tff' is invalid"),
        (["table=5", "dry_run=true", "region.hdd=tf"], "region.hdd"),
        (["5"], "expected key=value, got '5'"),
    ],
)
def test_7_reproduce_names_the_bad_key(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dfd.cli.reproduce import main

    assert main([*args, f"runs_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reproduce.py: error: ") and message in err and "Traceback" not in err


def test_7_collect_names_the_bad_key(capsys: pytest.CaptureFixture) -> None:
    from dfd.cli.collect import main

    with pytest.raises(SystemExit) as exit_:
        main(["table=9"])
    assert exit_.value.code == 2 and "the tables are 1, 2, 3, 4, 5, 6, 7" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 8. Ctrl-C


def test_8_ctrl_c_says_what_the_checkpoint_holds_and_how_to_resume(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    overrides = [*TINY, "distill=none", "trainer.max_iters=4", "trainer.checkpoint_interval=2", "trainer.evaluate=false"]
    real = train_mod.step

    def ctrl_c_at_3(run, model, images, targets, iteration):
        if iteration == 3:
            raise KeyboardInterrupt
        return real(run, model, images, targets, iteration)

    monkeypatch.setattr(train_mod, "step", ctrl_c_at_3)
    with caplog.at_level(logging.INFO, logger="dfd"), pytest.raises(KeyboardInterrupt):
        run_training(compose_config(overrides), tmp_path / "run")
    message = f"interrupted at iteration 3 of 4: {tmp_path / 'run' / 'checkpoints' / 'last.pth'} holds iteration 2"
    assert message in caplog.text and "The same command resumes it" in caplog.text
    assert message in (tmp_path / "run" / LOG_FILE).read_text()
    assert not (tmp_path / "run" / FAILED_FILE).exists() and not (tmp_path / "run" / LOCK_FILE).exists()
    monkeypatch.setattr(train_mod, "step", real)
    assert run_training(compose_config(overrides), tmp_path / "run")["timings"]["iterations_this_process"] == 2


# ----------------------------------------------------------------------------- 9. the smoke scale says which model


def test_9_the_smoke_scale_says_which_model_it_trains(finished_run: Path) -> None:
    smoke = load_config(compose_config(["distill=none", "student=retinanet_r50", "teacher=retinanet_x101_64x4d"]))
    assert (smoke.student.backbone, smoke.teacher.backbone) == ("resnet18", "resnet34")  # the family's smoke sizes
    line = describe_model(smoke.student, "student", "smoke")
    assert line.startswith("student: retinanet (backbone=resnet18, fpn_channels=64")
    assert "scale=smoke shrank it to the sizes of conf/model_scale/retinanet/smoke_student.yaml" in line
    full = load_config(compose_config(["distill=none", "scale=full"]))
    assert describe_model(full.student, "student", "full") == "student: retinanet (backbone=resnet50, fpn_channels=256)"
    log_text = (finished_run / LOG_FILE).read_text()
    assert any("trains the student: retinanet (backbone=resnet18" in line for line in log_text.splitlines()[:2])  # at the start
    assert "shrank it" in log_text


# ----------------------------------------------------------------------------- 10. readable output


def test_10_a_run_ends_with_its_metrics_and_keeps_its_whole_log(finished_run: Path) -> None:
    log_text = (finished_run / LOG_FILE).read_text()  # run_training called directly: train.log all the same
    assert f"finished {finished_run} (student run, 3 iterations" in log_text
    table = log_text[log_text.index("  metric"):].splitlines()
    assert table[0].split() == ["metric", "value"] and table[1].split()[0] == "bbox/AP"
    assert "learning rate" in log_text  # the whole log, not only the end


def test_10_labels_and_the_sweeps_last_lines(tmp_path: Path) -> None:
    cfg = load_config(compose_config(["+row=table5_tf_mse", "seed=2"]), require_teacher=False)
    assert run_label(cfg, tmp_path / "seed2") == "table5/tf_mse seed2"
    table = collect_table(load_spec(5), tmp_path, "smoke", [0])
    lines = summary_lines(table)
    assert len(lines) == 7 and lines[-1].startswith("tf_mse") and "mAP" in lines[-1] and "(paper 40.4)" in lines[-1]
    assert lines[-1].endswith("missing")
    seven = summary_lines(collect_table(load_spec(7), tmp_path, "smoke", [0]))
    assert "AP " in seven[0] and "(paper 71.8)" in seven[0] and "mIoU" in seven[-1] and "(paper 73.74)" in seven[-1]


def test_10_a_multirun_ends_with_one_line_per_job(capsys: pytest.CaptureFixture) -> None:
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.utils import instantiate

    cfg = compose_config(["distill=none", "trainer.max_iters=2"], return_hydra_config=True)
    summary = instantiate(cfg.hydra.callbacks.job_summary)  # what conf/config.yaml gives every multirun
    ok = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED, _return_value=12.345)
    failed = JobReturn(overrides=["seed=1", "schedule.optimizer=sgdd"], status=JobStatus.FAILED,
                       _return_value=ValueError("error: schedule.optimizer='sgdd' is invalid"))
    summary.on_multirun_start(config=cfg)
    for job in (ok, failed):
        summary.on_job_end(config=cfg, job_return=job)
    summary.on_multirun_end(config=cfg)
    out = capsys.readouterr().out.splitlines()
    assert out == [f"multirun {cfg.hydra.sweep.dir}, one line per job:", "  seed=0: finished, bbox/AP 12.35",
                   "  seed=1 schedule.optimizer=sgdd: failed, error: schedule.optimizer='sgdd' is invalid"]
    summary.report()  # at exit (Hydra skips on_multirun_end after a failed job): said once only
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- 11. the README's commands


def _readme_commands(text: str) -> list[str]:
    """The commands of the README's usage sections: code-block lines and inline code spans (the results
    sections, whose text is written with the numbers, are left out)."""
    usage = re.split(r"^## ", text, flags=re.M)
    usage = [sec for sec in usage if not sec.startswith("Results")]
    commands = []
    for section in usage:
        blocks = re.findall(r"^```(?:bash)?\n(.*?)^```", section, flags=re.M | re.S)
        commands += [line.strip() for block in blocks for line in block.splitlines()]
        commands += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", section, flags=re.M | re.S))
    return commands


def test_11_the_readme_commands_work_on_a_fresh_clone() -> None:
    """Every command of the README is a make target (which sets up .venv) or runs .venv's programs."""
    if not shutil.which("make"):
        pytest.skip("no make")
    targets = [("collect-table-5", "scripts/collect.py table=5 scale=smoke seeds=[0] runs_root=runs"),
               ("wandb-sync", "/bin/wandb sync"), ("reproduce-table-5", "scripts/reproduce.py table=5")]
    for target, expected in targets:
        # -W pyproject.toml: as on a fresh clone, where .venv is still to be made
        proc = subprocess.run(["make", "-n", "-W", "pyproject.toml", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and expected in proc.stdout and "-m venv" in proc.stdout, proc.stdout + proc.stderr
    commands = _readme_commands((REPO / "README.md").read_text())
    assert "make collect-table-5 SCALE=smoke" in commands and "make wandb-sync" in commands
    bare = [c for c in commands if re.match(r"(python3?|wandb|torchrun|pytest)\s", c)]
    assert not bare, f"commands that need .venv activated: {bare}"
    made = {re.sub(r"-N$", "-5", m.group(1)) for c in commands if (m := re.match(r"make ([\w-]+)", c))}  # N: a table
    proc = subprocess.run(["make", "-n", *sorted(made)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- 12. files, temp files, W&B


def test_12_a_killed_writes_temporary_file_is_removed_at_the_next_start(finished_run: Path) -> None:
    assert not list((finished_run / "checkpoints").glob(".*.tmp")) and (finished_run / "checkpoints" / "last.pth").is_file()
    assert ".last.pth.k1ll3d.tmp, left by a run killed while writing it" in (finished_run / LOG_FILE).read_text()


def test_12_files_a_run_writes_are_readable_by_the_group(finished_run: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    assert {CHECKPOINT.name, METRICS_FILE, LOG_FILE, "config.yaml", "history.jsonl"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_12_wandb_online_without_a_server_falls_back_to_offline(tmp_path: Path, wandb_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="dfd"):
        logger = RunLogger(tmp_path, {"seed": 0}, kind="wandb", mode="online", init_timeout=2)
    assert time.perf_counter() - start < 60
    assert "W&B online did not start within logger.init_timeout=2s" in caplog.text and "logging offline instead" in caplog.text
    logger.log({"loss/total": 1.0}, step=1)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
