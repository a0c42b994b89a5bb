"""The paper's figures (scripts/figures.py) from tiny real runs made by the training entry point: the attention
maps (Fig. 1/4), the teacher-student distance logged during training (Fig. 3b), one chart per collected table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_collect import write_finished

from dfd.cli import figures
from dfd.distill import disparity_map, region_mask, spatial_attention
from dfd.engine.config import compose_config
from dfd.engine.train import run_training
from dfd.results import collect_table, load_spec, results_dir, to_csv
from dfd.rundir import CHECKPOINT, FEATURE_L2, HISTORY_FILE, METRICS_FILE

LEVELS = ("p3", "p4", "p5", "p6", "p7")  # the smoke RetinaNet's distilled levels


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / HISTORY_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    """The demo's three runs in miniature: teacher, undistilled student, DFD student (logging every step)."""
    root = tmp_path_factory.mktemp("demo")
    run_training(compose_config([*TINY, "train=teacher"]), root / "teacher")
    run_training(compose_config([*TINY, "distill=none"]), root / "student")
    run_training(compose_config([*TINY, "distill=dfd", "trainer.log_interval=1",
                                 f"teacher.checkpoint={root / 'teacher' / CHECKPOINT}"]), root / "dfd")
    return root


@pytest.fixture()
def tables(tmp_path: Path) -> Path:
    """A collected Table 5 (table5.csv) from hand-made runs: two rows of three seeds, the rest missing."""
    runs = tmp_path / "runs"
    for seed in range(3):
        write_finished(runs, 5, "tf_mse", seed, {"bbox/AP": 20.0 + seed})
        write_finished(runs, 5, "mse_mse", seed, {"bbox/AP": 19.0})
    out = tmp_path / "tables"
    out.mkdir()
    (out / "table5.csv").write_text(to_csv(collect_table(load_spec(5), runs, "smoke", [0, 1, 2])))
    return out


def test_training_logs_the_feature_distance_with_and_without_f_trans(demo: Path) -> None:
    history = [h for h in _history(demo / "dfd") if "loss/total" in h]  # the training steps (not the evaluation)
    assert [h["step"] for h in history] == [1, 2, 3]
    for record in history:
        for level in LEVELS:
            for kind in ("aligned", "f_trans"):
                value = record[FEATURE_L2.format(method="dfd", level=level, kind=kind)]
                assert value > 0 and value == value, (level, kind)
    assert not any(k.startswith("feature_l2/") for h in _history(demo / "student") for k in h)  # no teacher: nothing
    losses = json.loads((demo / "dfd" / METRICS_FILE).read_text())["losses"]
    assert not any(k.startswith("feature_l2/") for k in losses)  # a logged value, not a loss


def test_logging_the_distance_changes_nothing_the_run_computes(demo: Path, tmp_path: Path) -> None:
    """The same run logging only its last step: the same losses there as the run logging every step."""
    run_training(compose_config([*TINY, "distill=dfd", "trainer.log_interval=3",
                                 f"teacher.checkpoint={demo / 'teacher' / CHECKPOINT}"]), tmp_path / "dfd")
    (once,) = [h for h in _history(tmp_path / "dfd") if "loss/total" in h]
    every = [h for h in _history(demo / "dfd") if "loss/total" in h][-1]
    assert {k: v for k, v in once.items() if k.startswith(("loss/", "distill/"))} == {
        k: v for k, v in every.items() if k.startswith(("loss/", "distill/"))}


def test_attention_maps_are_the_librarys(demo: Path) -> None:
    models = {who: figures.load_run(demo / who, f"{who}_run")[0] for who in ("teacher", "student", "dfd")}
    batch = models["dfd"].prepare([torch.rand(3, 96, 128)], [{}], "cpu")
    maps = figures.attention_maps(models, batch, ["p3"], temperature=1.0, threshold="mean")["p3"]
    with torch.no_grad():
        t, d = models["teacher"].distill_maps(batch, ["p3"])["p3"], models["dfd"].distill_maps(batch, ["p3"])["p3"]
    assert torch.allclose(maps["A(F) teacher"], spatial_attention(t))
    assert torch.allclose(maps["D (teacher, DFD)"], disparity_map(d, t))
    assert torch.equal(maps["HD mask (D ≥ P)"], region_mask(disparity_map(d, t), "mean"))


def test_figures_of_every_kind(demo: Path, tables: Path, tmp_path: Path, data_cache: Path) -> None:
    out = tmp_path / "figures"
    code = figures.main([f"demo_dir={demo}", f"tables_dir={tables}", f"out_dir={out}", "images=2"])
    assert code == 0
    stems = ["attention_demo_image0", "attention_demo_image1", "l2_distance_demo", "table5_paper_vs_reproduced"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{ext}" for s in stems for ext in ("pdf", "png"))
    for path in out.iterdir():
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF"), path


def test_a_figure_that_cannot_be_drawn_says_why(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "figures"
    args = [f"dfd_run={demo / 'student'}", f"tables_dir={tmp_path / 'none'}", f"out_dir={out}", "kinds=[l2_distance,tables]"]
    assert figures.main(args) == 1
    err = capsys.readouterr().err
    assert f"l2_distance: {demo / 'student' / HISTORY_FILE} has no feature_l2/ values" in err
    assert f"tables: tables_dir={tmp_path / 'none'}: no collected table<N>.csv there" in err
    assert figures.main([f"demo_dir={tmp_path / 'nothing'}", f"out_dir={out}", "kinds=[attention]"]) == 1
    assert "teacher_run=" in (err := capsys.readouterr().err) and "make demo" in err
    assert figures.main(["image=3"]) == 2 and "image=3: unknown key" in capsys.readouterr().err


def test_figures_refuse_the_results_folder_from_a_dirty_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import dfd.cli.common

    monkeypatch.setattr(dfd.cli.common, "code_version", lambda: {"version": "0.1.0", "commit": "abc", "dirty": True})
    target = results_dir() / "figures"
    before = target.is_dir() and sorted(target.iterdir())
    # tables from an empty folder: even if the refusal failed, nothing would be drawn there
    assert figures.main([f"tables_dir={tmp_path}", "kinds=[tables]"]) == 2
    assert "committed code only" in capsys.readouterr().err
    assert (target.is_dir() and sorted(target.iterdir())) == before


def test_wandb_true_logs_every_png_as_an_image(tables: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from test_collect import _fake_wandb

    calls: dict = {}
    fake = _fake_wandb(calls)
    fake.Image = lambda path: ("image", path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "figures"
    assert figures.main([f"tables_dir={tables}", f"out_dir={out}", "kinds=[tables]", "wandb=true"]) == 0
    assert calls["init"]["job_type"] == "figures" and calls["finished"]
    assert calls["log"] == {"table5_paper_vs_reproduced": ("image", str(out / "table5_paper_vs_reproduced.png"))}
