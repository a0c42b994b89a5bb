#!/usr/bin/env python
"""The whole path in minutes on a CPU: synthetic COCO data, a teacher, two students, one table.

    python scripts/demo.py [runs_root=runs] [seeds=[0,1,2]] [extra Hydra overrides ...]

Trains (or, if already finished, reuses) in ``<runs_root>/smoke/demo/``: the teacher (seed 0),
and for every seed the student without distillation, the same trained as long as the teacher (the
control that tells a distillation gain from a longer training) and the student distilled with DFD
(``student/``, ``student_long/`` and ``dfd/`` for seed 0, ``<name>_seed<S>/`` for the others);
all are evaluated with pycocotools, and the table (mean ± std over the seeds, and n) is printed
and written to ``table.md`` there, with the DFD student's difference to both controls marked as
within or beyond the seeds' spread (the rule of ``dfd.results.tables.compare``).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from dfd.engine.config import compose_config  # noqa: E402
from dfd.engine.train import run_training  # noqa: E402
from dfd.results.tables import Cell, compare  # noqa: E402
from dfd.rundir import CHECKPOINT  # noqa: E402

COLUMNS = ("bbox/AP", "bbox/AP50", "bbox/APs", "bbox/APm", "bbox/APl")


def _cell(cell: Cell) -> str:
    if cell.mean is None:
        return "—"
    return f"{cell.mean:.1f}" if cell.std is None else f"{cell.mean:.1f} ± {cell.std:.1f}"


def _verdict(cells: list[list[Cell]], label: str, row: int, base: int) -> str:
    verdict = compare(cells[row][0], cells[base][0])
    return f"AP of DFD against {label}: " + ("one seed, no spread to judge it by" if verdict.spread is None else
                                             f"{verdict.delta:+.1f} with a spread of {verdict.spread:.1f}: "
                                             f"{verdict.verdict} the seeds' spread")


def markdown(rows: list[tuple[str, list[dict]]], comparisons: list[tuple[str, int, int]]) -> str:
    """One line per method: each metric's mean ± std over its runs and n; then, for each ``(label, row, base)``
    of ``comparisons``, the AP of row ``row`` against row ``base``, judged by the seeds' spread."""
    head = "| method | n | " + " | ".join(c.split("/")[1] for c in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    cells = [[Cell(None, [m[c] for m in metrics if m.get(c) is not None]) for c in COLUMNS] for _, metrics in rows]
    body = ["| " + name + f" | {len(metrics)} | " + " | ".join(map(_cell, row)) + " |" for (name, metrics), row in zip(rows, cells)]
    return "\n".join([head, rule, *body, "", *(_verdict(cells, *c) + "  " for c in comparisons)]).rstrip()


def as_long_as_the_teacher(overrides: list[str]) -> list[str]:
    """The overrides that train a student for the teacher's epochs (``schedule.teacher_epochs``, steps scaled alike, as
    the teacher's): the control that tells a distillation gain from a longer training."""
    s = compose_config(["scale=smoke", *overrides]).schedule
    epochs = s.teacher_epochs or s.epochs
    steps = [round(x * epochs / s.epochs) for x in s.steps]
    return [f"schedule.epochs={epochs}", f"schedule.steps=[{','.join(map(str, steps))}]"]


def _parse(argv: list[str]) -> tuple[str, list[int], list[str]]:
    runs_root, seeds, extra = "runs", [0, 1, 2], []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "runs_root":
            runs_root = value
        elif key == "seeds":
            seeds = yaml.safe_load(value)
            seeds = seeds if isinstance(seeds, list) else [seeds]
            if not seeds or not all(isinstance(x, int) for x in seeds) or len(set(seeds)) != len(seeds):
                raise SystemExit(f"demo.py: seeds={value!r} is invalid: expected distinct integers, e.g. seeds=[0,1,2]")
        else:
            extra.append(arg)
    return runs_root, seeds, extra


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    runs_root, seeds, extra = _parse(argv)
    base = Path(runs_root) / "smoke" / "demo"
    t0 = time.perf_counter()

    def run(name: str, overrides: list[str], seed: int = 0) -> dict:
        cfg = compose_config(["scale=smoke", f"runs_root={runs_root}", f"seed={seed}", *overrides, *extra])
        where = name if seed == 0 else f"{name}_seed{seed}"
        logging.info("=== %s (%s) ===", where, " ".join([*overrides, f"seed={seed}"]))
        return run_training(cfg, base / where)

    teacher = run("teacher", ["train=teacher"])
    students = [run("student", ["distill=none"], seed) for seed in seeds]
    longer = as_long_as_the_teacher(["distill=none", *extra])
    controls = [run("student_long", ["distill=none", *longer], seed) for seed in seeds]
    dfds = [run("dfd", ["distill=dfd", f"teacher.checkpoint={base / 'teacher' / CHECKPOINT}"], seed) for seed in seeds]
    name = students[0]["experiment"]["student"]
    rows = [
        (f"teacher ({teacher['experiment']['teacher']}), seed 0", [teacher["metrics"]]),
        (f"student ({name}), no distillation", [r["metrics"] for r in students]),
        (f"student ({name}), no distillation, as long as the teacher ({longer[0].split('=')[1]} epochs)",
         [r["metrics"] for r in controls]),
        (f"student ({name}) + DFD", [r["metrics"] for r in dfds]),
    ]
    table = markdown(rows, [("no distillation", 3, 1), ("no distillation as long as the teacher", 3, 2)])
    (base / "table.md").write_text(
        "Smoke scale: small models trained from scratch on the synthetic COCO set; not comparable with the paper. "
        f"Students: mean ± std over seeds {', '.join(map(str, seeds))}.\n\n" + table + "\n"
    )
    print(f"\nDemo finished in {time.perf_counter() - t0:.0f} s; runs in {base}/\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
