"""Tests of the table specs (experiments/tableN.yaml) and the collector (dfd/results,
scripts/collect.py). Run directories are built by hand in tmp_path; nothing trains."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from dfd.results import (
    SpecError,
    collect_table,
    latex_escape,
    load_spec,
    log_wandb,
    to_csv,
    to_latex,
    to_markdown,
    write_tables,
)
from dfd.results.formats import SMOKE_WARNING

REPO = Path(__file__).resolve().parents[1]
TABLES = range(1, 8)
ROW_COUNTS = {1: 6, 2: 15, 3: 7, 4: 5, 5: 7, 6: 8, 7: 8}


# --------------------------------------------------------------------------- fixture builders


def _seed_dir(root: Path, table: int, row: str, seed: int, scale: str = "smoke") -> Path:
    path = root / scale / f"table{table}" / row / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _experiment(table: int, row: str, seed: int, scale: str,
                identity: dict[str, Any] | None = None) -> dict[str, Any]:
    exp = {"table": table, "row": row, "seed": seed, "scale": scale, "role": "student",
           "methods": ["dfd"], "teacher": "tiny_teacher", "student": "tiny_student"}
    exp.update(identity or {})
    return exp


def write_finished(root: Path, table: int, row: str, seed: int, metrics: dict[str, float],
                   scale: str = "smoke", identity: dict[str, Any] | None = None) -> Path:
    """A finished run: metrics.json (plus the files the collector must ignore).
    ``identity`` overrides keys of the ``experiment`` block (to fake a misplaced file)."""
    path = _seed_dir(root, table, row, seed, scale)
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "checkpoints").mkdir(exist_ok=True)
    (path / "checkpoints" / "last.pth").write_bytes(b"\0")
    payload = {
        "status": "finished",
        "metrics": metrics,
        "losses": {"loss/classification": 0.5},
        "timings": {"train_s": 1.0, "eval_s": 0.1, "step_s": 0.01, "iterations": 10},
        "code_version": {"version": "0.1.0", "commit": "abc123", "dirty": False},
        "experiment": _experiment(table, row, seed, scale, identity),
        "finished_at": "2026-11-25T17:00:00+00:00",
    }
    (path / "metrics.json").write_text(json.dumps(payload))
    return path


def write_failed(root: Path, table: int, row: str, seed: int, error: str, scale: str = "smoke") -> Path:
    path = _seed_dir(root, table, row, seed, scale)
    payload = {"status": "failed", "error": error, "traceback": "Traceback ...",
               "experiment": _experiment(table, row, seed, scale), "failed_at": "2026-11-25T17:00:00+00:00"}
    (path / "failed.json").write_text(json.dumps(payload))
    return path


def write_incomplete(root: Path, table: int, row: str, seed: int, scale: str = "smoke") -> Path:
    path = _seed_dir(root, table, row, seed, scale)
    (path / "config.yaml").write_text("seed: 0\n")
    return path


def write_not_implemented(root: Path, table: int, row: str, message: str, scale: str = "smoke") -> Path:
    path = root / scale / f"table{table}" / row
    path.mkdir(parents=True, exist_ok=True)
    (path / "not_implemented.json").write_text(json.dumps({"status": "not_implemented", "error": message}))
    return path


TEST_SPEC = """\
number: 9
title: "Test table: 100% & more_things"
metrics:
  mAP: bbox/AP
  APs: {key: bbox/APs, decimals: 2}
labels: [Method]
groups:
  - name: "Teacher A → Student B"
    overrides: [teacher=retinanet_x101_64x4d, student=retinanet_r50]
    rows:
      - {id: complete, labels: {Method: Ours}, overrides: [distill=dfd], paper: {mAP: 40.0, APs: 20.0}}
      - {id: partial, labels: {Method: PKD}, overrides: [distill=pkd], paper: {mAP: 39.0, APs: null}}
      - {id: missing, labels: {Method: MGD}, overrides: [distill=mgd], paper: {mAP: 38.0, APs: 19.0}}
  - name: Second group
    overrides: [teacher=faster_rcnn_r101, student=faster_rcnn_r50]
    rows:
      - {id: failed, labels: {Method: FGD}, overrides: [distill=fgd], paper: {mAP: 37.0, APs: 18.0}}
      - {id: not_impl, labels: {Method: CWD}, overrides: [distill=cwd], paper: {mAP: 36.0, APs: 17.0}}
      - {id: mismatch, labels: {Method: MSE}, overrides: [distill=mse], paper: {mAP: 35.0, APs: 16.0}}
      - {id: incomplete, labels: {Method: none}, overrides: [distill=none], paper: {mAP: 34.0, APs: 15.0}}
"""
NOT_IMPL = "student.detector='faster_rcnn' is not implemented (available: retinanet)"


@pytest.fixture()
def test_spec(tmp_path: Path):
    path = tmp_path / "spec" / "table9.yaml"
    path.parent.mkdir()
    path.write_text(TEST_SPEC, encoding="utf-8")
    return load_spec(path)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """Run directories for the test spec, seeds 0..2, covering every row status."""
    root = tmp_path / "runs"
    for seed, (ap, aps) in enumerate([(30.0, 10.0), (31.0, 12.0), (35.0, 14.0)]):
        write_finished(root, 9, "complete", seed, {"bbox/AP": ap, "bbox/APs": aps, "bbox/AP50": 50.0})
    write_finished(root, 9, "partial", 0, {"bbox/AP": 20.0, "bbox/APs": -1.0})  # -1: undefined
    write_finished(root, 9, "partial", 1, {"bbox/AP": 22.0, "bbox/APs": 8.0})
    write_failed(root, 9, "partial", 2, "CUDA error: out of memory")
    write_failed(root, 9, "failed", 0, "RuntimeError: boom\nsecond line")
    write_not_implemented(root, 9, "not_impl", NOT_IMPL)
    write_finished(root, 9, "mismatch", 0, {"bbox/AP": 99.0}, identity={"row": "complete"})  # copied from elsewhere
    write_finished(root, 9, "mismatch", 1, {"bbox/AP": 33.0})
    write_finished(root, 9, "mismatch", 2, {"bbox/AP": 33.0})
    write_incomplete(root, 9, "incomplete", 0)
    return root


# --------------------------------------------------------------------------- the seven specs


@pytest.mark.parametrize("number", TABLES)
def test_every_spec_loads(number: int) -> None:
    spec = load_spec(number)
    assert spec.number == number
    assert spec.title and spec.metrics and spec.groups
    ids = [row.id for row in spec.rows]
    assert len(ids) == len(set(ids)) == ROW_COUNTS[number]
    for row in spec.rows:
        assert set(row.labels) == set(spec.labels)
        assert set(row.paper) == set(spec.metrics)
        group = next(g for g in spec.groups if g.name == row.group)
        assert row.overrides[: len(group.overrides)] == group.overrides
        assert any(o.startswith(("distill=", "train=")) for o in row.overrides), row.id


VOCABULARY = {
    "train": {"student", "teacher"},
    "teacher": {"retinanet_x101_64x4d", "retinanet_x101_32x8d", "retinanet_r101", "retinanet_r50",
                "faster_rcnn_r101", "faster_rcnn_x101", "mask_rcnn_x101", "cascade_mask_rcnn_x101",
                "reppoints_x101", "mask_rcnn_swin_s", "yolov6_s", "simplebaseline_r50", "pspnet_r101"},
    "student": {"retinanet_r50", "retinanet_r18", "faster_rcnn_r50", "reppoints_r50", "mask_rcnn_swin_t",
                "yolov6_t", "simplebaseline_mobilenetv2", "pspnet_r18"},
    "distill": {"none", "dfd", "mse", "fgd", "mgd", "pkd", "cwd", "mgd+dfd", "pkd+dfd", "pkd+mgd"},
    "region": {"paper", "split", "unsplit"},
    "region.hd": {"mse", "tf", "tf+mse", "none"},
    "region.ld": {"mse", "tf", "tf+mse", "none"},
    "schedule": {"1x", "2x", "rcnn_1x", "rcnn_2x", "swin_1x", "epochs_300", "epochs_400", "pose_210e", "seg_40k"},
    "data": {"synthetic_yolo", "synthetic_keypoints", "synthetic_cityscapes"},
}


@pytest.mark.parametrize("number", TABLES)
def test_overrides_use_the_config_vocabulary(number: int) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for row in load_spec(number).rows:
        for override in parser.parse_overrides(row.overrides):
            key, value = override.key_or_group, override.value()
            if key.startswith(("distill.", "schedule.")):
                continue  # a method's weight, levels or inheriting, a schedule value (composed in test_config.py)
            assert key in VOCABULARY, f"{row.id}: unknown override key {key!r}"
            assert value in VOCABULARY[key], f"{row.id}: {key}={value!r} not in the vocabulary"
            group_dir = REPO / "conf" / key
            if "." not in key and group_dir.is_dir():  # the config tree, where it exists already
                assert (group_dir / f"{value}.yaml").is_file(), f"{row.id}: no conf/{key}/{value}.yaml"


PAPER = {
    1: {"baseline": 36.4, "hd_only": 39.8, "ld_only": 38.2, "hd_ld": 39.6, "split": 40.0, "ours": 40.4},
    3: {"student": 37.4, "r101_pkd": 39.6, "r101_ours": 39.7, "x101_pkd": 40.0, "x101_ours": 40.5,
        "mask_x101_pkd": 40.5, "mask_x101_ours": 41.1},
    4: {"mgd": 40.0, "mgd_dfd": 40.3, "pkd": 39.9, "pkd_dfd": 40.3, "pkd_mgd": 39.9},
    5: {"mse_mse": 39.7, "tf_tf": 40.2, "tf_none": 39.9, "none_tf": 39.4, "mse_tf": 39.9,
        "tf_tf_mse": 40.2, "tf_mse": 40.4},
    6: {"swin_teacher": 48.2, "swin_student": 42.7, "swin_pkd": 43.9, "swin_ours": 44.4,
        "yolov6_teacher": 44.0, "yolov6_student": 40.6, "yolov6_pkd": 41.3, "yolov6_ours": 41.7},
}


@pytest.mark.parametrize("number", sorted(PAPER))
def test_paper_numbers_single_metric_tables(number: int) -> None:
    spec = load_spec(number)
    for row_id, value in PAPER[number].items():
        assert spec.row(row_id).paper == {"mAP": value}, row_id


def test_paper_numbers_table5_labels_and_overrides() -> None:
    spec = load_spec(5)
    expected = {"mse_mse": ("MSE", "MSE", "mse", "mse"), "tf_tf": ("TF", "TF", "tf", "tf"),
                "tf_none": ("TF", "-", "tf", "none"), "none_tf": ("-", "TF", "none", "tf"),
                "mse_tf": ("MSE", "TF", "mse", "tf"), "tf_tf_mse": ("TF", "TF + MSE", "tf", "tf+mse"),
                "tf_mse": ("TF", "MSE", "tf", "mse")}
    assert [row.id for row in spec.rows] == list(expected)
    for row_id, (hd, ld, hd_key, ld_key) in expected.items():
        row = spec.row(row_id)
        assert row.labels == {"HD": hd, "LD": ld, "Schedule": "1x"}
        assert f"region.hd={hd_key}" in row.overrides and f"region.ld={ld_key}" in row.overrides
        assert "region=paper" in row.overrides and "distill=dfd" in row.overrides


def test_paper_numbers_table2() -> None:
    spec = load_spec(2)
    assert list(spec.metrics) == ["mAP", "APs", "APm", "APl"]
    assert [m.key for m in spec.metrics.values()] == ["bbox/AP", "bbox/APs", "bbox/APm", "bbox/APl"]
    expected = {
        "retinanet_ours": (41.7, 24.4, 46.0, 55.7),
        "faster_rcnn_ours": (42.4, 23.9, 46.8, 56.3),
        "reppoints_ours": (42.7, 24.8, 46.7, 56.2),
        "retinanet_student": (37.4, 20.0, 40.7, 49.7),
        "faster_rcnn_mgd": (42.1, 23.7, 46.4, 56.1),
        "reppoints_pkd": (42.4, 24.3, 46.7, 56.4),
        "retinanet_fgd": (40.9, 23.1, 45.1, 54.9),
    }
    for row_id, values in expected.items():
        assert tuple(spec.row(row_id).paper.values()) == values, row_id
    for row in spec.rows:
        assert {"schedule=2x", "schedule=rcnn_2x"} & set(row.overrides), row.id  # 24 epochs
    assert "teacher=cascade_mask_rcnn_x101" in spec.row("faster_rcnn_ours").overrides


def test_paper_numbers_table3_teacher_labels() -> None:
    spec = load_spec(3)
    assert {g.rows[0].labels["Teacher mAP"] for g in spec.groups} == {"39.8", "41.2", "42.2"}


def test_paper_numbers_table6_and_7() -> None:
    t6 = load_spec(6)
    assert "train=teacher" in t6.row("yolov6_teacher").overrides
    assert {"schedule=epochs_300", "data=synthetic_yolo"} <= set(t6.row("yolov6_ours").overrides)
    t7 = load_spec(7)
    assert {m: s.key for m, s in t7.metrics.items()} == {"AP": "keypoints/AP", "mIoU": "seg/mIoU"}
    assert t7.row("pose_teacher").paper == {"AP": 71.8, "mIoU": None}
    assert t7.row("pose_ours").paper == {"AP": 62.6, "mIoU": None}
    assert t7.row("pose_cwd").paper["AP"] == 62.2
    assert t7.row("seg_teacher").paper == {"AP": None, "mIoU": 78.34}
    assert t7.row("seg_student").paper["mIoU"] == 69.85
    assert t7.row("seg_cwd").paper["mIoU"] == 73.53
    assert t7.row("seg_ours").paper["mIoU"] == 73.74
    assert {"data=synthetic_keypoints", "schedule=pose_210e"} <= set(t7.row("pose_ours").overrides)
    assert {"data=synthetic_cityscapes", "schedule=seg_40k"} <= set(t7.row("seg_ours").overrides)


# --------------------------------------------------------------------------- spec validation


GOOD_ROW = "{id: a, labels: {M: x}, overrides: [distill=dfd], paper: {mAP: 1.0}}"


@pytest.mark.parametrize(
    ("rows", "top", "fragment"),
    [
        (f"[{GOOD_ROW}, {GOOD_ROW}]", "", "duplicate row id 'a'"),
        ("[{id: a, labels: {M: x}, paper: {mAP: 1.0, AP50: 2.0}}]", "", "unknown metric column(s) ['AP50']"),
        ("[{id: Bad-Id, labels: {M: x}, paper: {mAP: 1.0}}]", "", "groups[0].rows[0].id"),
        ("[{id: a, labels: {M: x}, paper: {}}]", "", "missing metric column(s) ['mAP']"),
        ("[{id: a, labels: {M: x}}]", "", "missing required key 'paper'"),
        ("[{id: a, labels: {M: x}, paper: {mAP: 1.0}, overrides: [distill]}]", "", "overrides[0]"),
        ("[{id: a, labels: {M: x}, paper: {mAP: 1.0}, overrides: [teacher=x]}]", "", "'teacher' is set twice"),
        ("[{id: a, labels: {Q: x}, paper: {mAP: 1.0}}]", "", "unknown label column(s) ['Q']"),
        (f"[{GOOD_ROW}]", "bogus: 1\n", "unknown key(s) ['bogus']"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path: Path, rows: str, top: str, fragment: str) -> None:
    path = tmp_path / "table9.yaml"
    path.write_text(
        f"number: 9\ntitle: t\n{top}metrics: {{mAP: bbox/AP}}\nlabels: [M]\n"
        f"groups:\n  - name: g\n    overrides: [teacher=retinanet_r50]\n    rows: {rows}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_spec_missing_top_level_key_and_number(tmp_path: Path) -> None:
    path = tmp_path / "table3.yaml"
    path.write_text("number: 3\nmetrics: {mAP: bbox/AP}\ngroups: []\n")
    with pytest.raises(SpecError, match="missing required key 'title'"):
        load_spec(path)
    path.write_text(f"number: 4\ntitle: t\nmetrics: {{mAP: bbox/AP}}\nlabels: [M]\n"
                    f"groups:\n  - name: g\n    rows: [{GOOD_ROW}]\n")
    with pytest.raises(SpecError, match="'number' is 4, expected 3"):
        load_spec(3, experiments_dir=tmp_path)
    with pytest.raises(SpecError, match="not found"):
        load_spec(8, experiments_dir=tmp_path)


# --------------------------------------------------------------------------- collecting


def test_collect_statuses_and_numbers(test_spec, runs: Path) -> None:
    table = collect_table(test_spec, runs, "smoke", [0, 1, 2])
    rows = {row.spec.id: row for row in table.rows}

    complete = rows["complete"]
    assert complete.status_text == "ok (n=3)"
    assert complete.cells["mAP"].mean == pytest.approx(32.0)
    assert complete.cells["mAP"].std == pytest.approx(math.sqrt(7.0))  # sample std of 30, 31, 35
    assert complete.cells["mAP"].delta == pytest.approx(-8.0)
    assert complete.cells["APs"].mean == pytest.approx(12.0)
    assert complete.cells["APs"].std == pytest.approx(2.0)

    partial = rows["partial"]
    assert partial.status_text == "partial (2/3 seeds)"
    assert partial.cells["mAP"].values == [20.0, 22.0]
    assert partial.cells["mAP"].std == pytest.approx(math.sqrt(2.0))
    assert partial.cells["APs"].values == [8.0]  # the -1 (undefined) is not a number
    assert partial.cells["APs"].std is None and partial.cells["APs"].delta is None  # paper: null
    assert any("out of memory" in p for p in partial.problems)

    assert rows["missing"].status_text == "missing"
    assert rows["failed"].status_text == "failed: RuntimeError: boom"
    assert rows["not_impl"].status_text == f"not implemented: {NOT_IMPL}"
    assert rows["incomplete"].status_text == "missing (incomplete: seed 0)"
    mismatch = rows["mismatch"]
    assert mismatch.status == "error"
    assert str(runs / "smoke" / "table9" / "mismatch" / "seed0" / "metrics.json") in mismatch.detail
    assert "experiment.row='complete'" in mismatch.detail

    for row_id in ("missing", "failed", "not_impl", "mismatch", "incomplete"):
        for cell in rows[row_id].cells.values():
            assert cell.values == [] and cell.mean is None and cell.delta is None, row_id
    assert table.models == {"Teacher A → Student B": ["tiny_teacher → tiny_student"]}
    assert table.code_versions == ["0.1.0 (abc123)"]


def test_collect_single_seed_and_scale(test_spec, runs: Path) -> None:
    table = collect_table(test_spec, runs, "smoke", [0])
    rows = {row.spec.id: row for row in table.rows}
    assert rows["complete"].status_text == "ok (n=1)"
    assert rows["complete"].cells["mAP"].std is None
    assert rows["partial"].status_text == "ok (n=1)"
    assert all(row.status == "missing" for row in collect_table(test_spec, runs, "full", [0]).rows)
    with pytest.raises(ValueError, match="scale"):
        collect_table(test_spec, runs, "medium", [0])


def test_seed_in_wrong_scale_is_an_error(test_spec, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_finished(root, 9, "complete", 0, {"bbox/AP": 1.0}, scale="full", identity={"scale": "smoke"})
    row = collect_table(test_spec, root, "full", [0]).rows[0]
    assert row.status == "error" and "experiment.scale='smoke'" in row.detail


def test_markdown(test_spec, runs: Path) -> None:
    text = to_markdown(collect_table(test_spec, runs, "smoke", [0, 1, 2]))
    assert text.startswith("# Table 9: Test table")
    assert SMOKE_WARNING in text and "Seeds: 0, 1, 2" in text
    assert "tiny_teacher → tiny_student" in text
    lines = {line.split("`")[-2]: line for line in text.splitlines() if line.startswith("|") and "`" in line}
    # the first group has no undistilled student of its own model: no baseline, "—" in "vs baseline"
    assert "| 40.0 | 32.0 ± 2.6 | -8.0 | — | 20.00 | 12.00 ± 2.00 | -8.00 | — | ok (n=3) |" in lines["complete"]
    assert "| 39.0 | 21.0 ± 1.4 | -18.0 | — | — | 8.00 (n=1) | — | — | partial (2/3 seeds) |" in lines["partial"]
    assert "| 38.0 | — | — | — | 19.00 | — | — | — | missing |" in lines["missing"]
    for row_id in ("failed", "not_impl", "mismatch", "incomplete"):
        cells = [c.strip() for c in lines[row_id].split("|")]
        assert cells[4] == cells[5] == cells[6] == cells[8] == cells[9] == cells[10] == "—", row_id
    assert "Baseline: Teacher A → Student B: none" in text and "Second group: incomplete" in text
    assert "not implemented: student.detector='faster_rcnn'" in lines["not_impl"]
    full = to_markdown(collect_table(test_spec, runs, "full", [0]))
    assert SMOKE_WARNING not in full


def test_csv(test_spec, runs: Path) -> None:
    text = to_csv(collect_table(test_spec, runs, "smoke", [0, 1, 2]))
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["group", "row_id", "Method", "status", "n", "baseline",
                                 "mAP_paper", "mAP_mean", "mAP_std", "mAP_delta", "mAP_vs_baseline", "mAP_spread", "mAP_verdict",
                                 "APs_paper", "APs_mean", "APs_std", "APs_delta", "APs_vs_baseline", "APs_spread", "APs_verdict",
                                 "detail"]
    rows = {r["row_id"]: r for r in reader}
    c = rows["complete"]
    assert (c["group"], c["status"], c["n"]) == ("Teacher A → Student B", "ok", "3")
    assert float(c["mAP_mean"]) == 32.0 and float(c["mAP_std"]) == pytest.approx(math.sqrt(7), abs=1e-4)
    assert float(c["mAP_delta"]) == -8.0 and float(c["mAP_paper"]) == 40.0
    assert rows["partial"]["status"] == "partial" and rows["partial"]["n"] == "2"
    assert rows["partial"]["APs_paper"] == "" and rows["partial"]["APs_std"] == ""
    for row_id in ("missing", "failed", "not_impl", "mismatch", "incomplete"):
        r = rows[row_id]
        assert r["mAP_mean"] == r["mAP_std"] == r["mAP_delta"] == "" and r["n"] == "0", row_id
    assert rows["not_impl"]["status"] == "not_implemented"
    assert rows["failed"]["detail"] == "failed: RuntimeError: boom"


def test_latex(test_spec, runs: Path) -> None:
    text = to_latex(collect_table(test_spec, runs, "smoke", [0, 1, 2]))
    assert r"\begin{tabular}{lrrrrrrrrl}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"Test table: 100\% \& more\_things" in text
    assert r"Teacher A $\rightarrow$ Student B" in text
    assert r"32.0 $\pm$ 2.6 & $-$8.0 & --- &" in text
    assert r"not\_implemented" not in text and "not implemented: student.detector='faster\\_rcnn'" in text
    assert latex_escape("a_b & 50% #1 ± → × ✓") == (
        r"a\_b \& 50\% \#1 $\pm$ $\rightarrow$ $\times$ \checkmark{}")


def test_write_tables_is_atomic(test_spec, runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "table9.md").write_text("old")
    os.chmod(out / "table9.md", 0o640)
    table = collect_table(test_spec, runs, "smoke", [0, 1, 2])
    assert not table.complete  # missing, failed, error rows: written beside the results
    paths = write_tables(table, out)
    assert sorted(p.name for p in out.iterdir()) == ["table9.md", "table9.partial.csv", "table9.partial.md", "table9.partial.tex"]
    assert (out / "table9.md").read_text() == "old"
    paths = write_tables(table, out, force=True)  # asked for: over the results
    assert sorted(p.name for p in out.iterdir()) == ["table9.csv", "table9.md", "table9.partial.csv", "table9.partial.md",
                                                     "table9.partial.tex", "table9.tex"]
    assert paths["md"].read_text() == to_markdown(table)
    assert (out / "table9.md").stat().st_mode & 0o777 == 0o640


def test_results_does_not_import_training_code() -> None:
    code = ("import sys, dfd.results; "
            "bad = [m for m in sys.modules if m.startswith(('dfd.engine', 'dfd.models', 'dfd.distill'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- CLI and W&B


def test_cli_writes_the_three_tables_only(tmp_path: Path) -> None:
    """collect.py writes the tables and nothing else; a run without the row's config digest (made by
    hand here) is stale, so the table is not complete: written beside the results unless force=true."""
    runs_root, out, cwd = tmp_path / "runs", tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    write_finished(runs_root, 5, "tf_mse", 0, {"bbox/AP": 12.34})
    write_failed(runs_root, 5, "tf_tf", 0, "ValueError: nope")
    before = sorted(str(p) for p in runs_root.rglob("*"))
    cmd = [sys.executable, str(REPO / "scripts" / "collect.py"), "table=5", "scale=smoke",
           f"runs_root={runs_root}", f"out_dir={out}", "print=false", "force=true"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["table5.csv", "table5.md", "table5.tex"]
    assert list(cwd.iterdir()) == []  # no outputs/, .hydra/ or log file
    assert sorted(str(p) for p in runs_root.rglob("*")) == before
    md = (out / "table5.md").read_text()
    assert "| 40.4 | — | — | — | stale: seed 0 ran another config than the row's |" in md
    assert "config digest None" in md  # the problem line names the digests
    assert "failed: ValueError: nope" in md and SMOKE_WARNING in md
    assert "wrote" in proc.stdout


def _fake_wandb(calls: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType("wandb")

    class Run:
        def log(self, data: dict[str, Any]) -> None:
            calls["log"] = data

        def finish(self) -> None:
            calls["finished"] = True

    def init(**kwargs: Any) -> Run:
        calls["init"] = kwargs
        return Run()

    class Table:
        def __init__(self, columns: list[str], data: list[list[Any]], **kwargs: Any) -> None:
            self.columns, self.data = columns, data

    module.init, module.Table = init, Table  # type: ignore[attr-defined]
    return module


def test_log_wandb_arguments(test_spec, runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    log_wandb(collect_table(test_spec, runs, "smoke", [0, 1, 2]), project="proj", mode="offline")
    init = calls["init"]
    assert (init["project"], init["mode"], init["name"], init["group"], init["job_type"]) == (
        "proj", "offline", "table9-smoke", "table9", "collect")
    logged = calls["log"]["table9"]
    assert logged.columns[:2] == ["group", "row_id"] and len(logged.data) == 7
    assert calls["finished"]


def test_log_wandb_offline_for_real(test_spec, runs: Path, wandb_home: Path) -> None:
    """Real wandb in offline mode (about 2 s here, so not marked slow); needs no account."""
    log_wandb(collect_table(test_spec, runs, "smoke", [0, 1, 2]), project="dfd-test", mode="offline")
    assert list((wandb_home / "wandb").glob("offline-run-*/run-*.wandb"))


# --------------------------------------------------------------------------- seeds, baselines, committed code


BASELINE_SPEC = """\
number: 9
title: Baselines
metrics:
  mAP: bbox/AP
labels: [Method]
groups:
  - name: A
    overrides: [teacher=retinanet_x101_64x4d, student=retinanet_r50, schedule=1x]
    rows:
      - {id: student, labels: {Method: none}, overrides: [distill=none], paper: {mAP: 37.4}}
      - {id: far, labels: {Method: FGD}, overrides: [distill=fgd], paper: {mAP: 39.0}}
      - {id: near, labels: {Method: MGD}, overrides: [distill=mgd], paper: {mAP: 39.2}}
      - {id: single, labels: {Method: PKD}, overrides: [distill=pkd], paper: {mAP: 39.3}}
  - name: B (same student, another teacher)
    overrides: [teacher=retinanet_r101, student=retinanet_r50, schedule=1x, distill.pkd.weight=6]
    rows:
      - {id: other_teacher, labels: {Method: Ours}, overrides: [distill=dfd], paper: {mAP: 40.0}}
  - name: C (another student)
    overrides: [teacher=retinanet_r101, student=retinanet_r18, schedule=1x]
    rows:
      - {id: no_baseline, labels: {Method: Ours}, overrides: [distill=dfd], paper: {mAP: 30.0}}
"""


@pytest.fixture()
def baseline_table(tmp_path: Path):
    """Three seeds: the student 30, 31, 32 (std 1); far 34, 35, 36 (Δ 4 > √2); near 30.5, 31.5, 32.5
    (Δ 0.5 ≤ √2); single one seed; other_teacher in another group of the same student."""
    path = tmp_path / "table9.yaml"
    path.write_text(BASELINE_SPEC, encoding="utf-8")
    root = tmp_path / "runs"
    for seed in range(3):
        for row, base in (("student", 30.0), ("far", 34.0), ("near", 30.5), ("other_teacher", 40.0)):
            write_finished(root, 9, row, seed, {"bbox/AP": base + seed})
    write_finished(root, 9, "single", 0, {"bbox/AP": 33.0})
    write_finished(root, 9, "no_baseline", 0, {"bbox/AP": 20.0})
    return collect_table(load_spec(path), root, "smoke", [0, 1, 2])


def test_the_baseline_of_a_row_is_its_groups_undistilled_student() -> None:
    spec2, spec3, spec5 = load_spec(2), load_spec(3), load_spec(5)
    assert spec2.baseline_of("retinanet_ours") == "retinanet_student"
    assert spec2.baseline_of("faster_rcnn_pkd") == "faster_rcnn_student"
    assert spec3.baseline_of("x101_ours") == "student"  # another teacher, the same student: its undistilled run
    assert spec5.baseline_of("tf_mse") == "mse_mse"  # no undistilled student: the spec names its reference row
    assert load_spec(4).baseline_of("mgd_dfd") is None  # neither: nothing is called a gain
    assert load_spec(6).baseline_of("yolov6_ours") == "yolov6_student"  # the teacher row is no baseline


def test_a_spec_may_name_a_groups_baseline(tmp_path: Path) -> None:
    path = tmp_path / "table9.yaml"
    path.write_text(BASELINE_SPEC.replace("  - name: C (another student)\n", "  - name: C (another student)\n    baseline: far\n"))
    assert load_spec(path).baseline_of("no_baseline") == "far"
    path.write_text(BASELINE_SPEC.replace("  - name: C (another student)\n", "  - name: C (another student)\n    baseline: nope\n"))
    with pytest.raises(SpecError, match=r"table9.yaml: groups\[2\].baseline: 'nope' is not a row id"):
        load_spec(path)


def test_differences_within_the_seeds_spread_are_not_gains(baseline_table) -> None:
    rows = {row.spec.id: row for row in baseline_table.rows}
    far, near = rows["far"].versus("mAP"), rows["near"].versus("mAP")
    assert (far.verdict, far.delta, far.spread) == ("beyond", pytest.approx(4.0), pytest.approx(math.sqrt(2)))
    assert (near.verdict, near.delta) == ("within", pytest.approx(0.5))
    assert rows["single"].versus("mAP").verdict == "no_spread"  # one seed: no spread
    assert rows["student"].versus("mAP").verdict == "baseline"
    assert rows["other_teacher"].baseline is rows["student"]
    assert rows["no_baseline"].versus("mAP").verdict is None

    md = to_markdown(baseline_table)
    lines = {line.split("`")[-2]: line for line in md.splitlines() if line.startswith("|") and "`" in line}
    assert "| +4.0 (beyond ±1.4) | ok (n=3) |" in lines["far"]
    assert "| +0.5 (within ±1.4: noise) | ok (n=3) |" in lines["near"]
    assert "| +2.0 (n=1: no spread) | partial (1/3 seeds) |" in lines["single"]
    assert "| baseline | ok (n=3) |" in lines["student"]
    assert "within ±s: noise" in md and "Baseline: A: student; B (same student, another teacher): student" in md

    records = {r["row_id"]: r for r in csv.DictReader(io.StringIO(to_csv(baseline_table)))}
    assert (records["near"]["baseline"], records["near"]["mAP_verdict"], records["near"]["mAP_vs_baseline"]) == ("student", "within", "0.5")
    assert float(records["far"]["mAP_spread"]) == pytest.approx(math.sqrt(2), abs=1e-4)
    assert records["single"]["mAP_verdict"] == "no_spread" and records["single"]["mAP_spread"] == ""
    assert records["no_baseline"]["baseline"] == "" and records["no_baseline"]["mAP_verdict"] == ""

    tex = to_latex(baseline_table)
    assert r"$+$0.5 (within $\pm$1.4: noise)" in tex and r"$+$2.0 (n=1: no spread)" in tex


def test_one_seed_says_it_has_no_spread(baseline_table) -> None:
    table = collect_table(baseline_table.spec, baseline_table.runs_root, "smoke", [0])
    md = to_markdown(table)
    assert "Seeds: 0 (n=1 per row: no error bars" in md
    assert "(within" not in md and "(beyond" not in md and "+4.0 (n=1: no spread)" in md


def test_the_header_names_mixed_and_dirty_code(tmp_path: Path, test_spec) -> None:
    root = tmp_path / "runs"
    for seed in range(2):
        path = write_finished(root, 9, "complete", seed, {"bbox/AP": 30.0})
        data = json.loads((path / "metrics.json").read_text())
        data["code_version"] = {"version": "0.1.0", "commit": f"c{seed}", "dirty": seed == 1}
        (path / "metrics.json").write_text(json.dumps(data))
    table = collect_table(test_spec, root, "smoke", [0, 1])
    assert table.code_warning == ("The runs come from 2 different code versions; 1 of 2 runs ran uncommitted code (dirty): "
                                  "no commit reproduces them exactly")
    assert f"> **{table.code_warning}.**" in to_markdown(table)
    assert "% The runs come from 2 different code versions" in to_latex(table)
    clean = collect_table(test_spec, root, "smoke", [0])
    assert clean.code_warning is None and "different code versions" not in to_markdown(clean)


def test_results_take_tables_and_figures_from_committed_code_only(tmp_path: Path) -> None:
    from dfd.results import results_dir, uncommitted_refusal

    dirty, clean = {"commit": "abc", "dirty": True}, {"commit": "abc", "dirty": False}
    for target in (results_dir(), results_dir() / "figures"):
        reason = uncommitted_refusal(target, dirty)
        assert reason and "committed code only" in reason and "allow_dirty=true" in reason and str(target) in reason
        assert uncommitted_refusal(target, dirty, allow_dirty=True) is None
        assert uncommitted_refusal(target, clean) is None
    assert uncommitted_refusal(tmp_path, dirty) is None  # elsewhere: any code


@pytest.mark.parametrize("program", ["collect", "reproduce"])
def test_the_programs_refuse_results_from_a_dirty_tree(program: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    import importlib

    import dfd.cli.common

    monkeypatch.setattr(dfd.cli.common, "code_version", lambda: {"version": "0.1.0", "commit": "abc", "dirty": True})
    main = importlib.import_module(f"dfd.cli.{program}").main
    before = sorted(p.name for p in (REPO / "experiments" / "results").iterdir())
    args = ["table=5", f"runs_root={tmp_path / 'runs'}", "print=false"][: 3 if program == "collect" else 2]
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{program}.py: error: out_dir=experiments/results: ") and "committed code only" in err
    assert sorted(p.name for p in (REPO / "experiments" / "results").iterdir()) == before
    assert not (tmp_path / "runs").exists()  # refused before anything trains
