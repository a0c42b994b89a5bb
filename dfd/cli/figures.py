"""The paper's figures, from runs and collected tables: PNG and PDF in ``out_dir`` (``experiments/results/figures``).

    python scripts/figures.py                         # or: make figures (the demo's runs, runs/smoke/demo/)
    python scripts/figures.py demo_dir=runs/smoke/demo tables_dir=experiments/results out_dir=/tmp/figures

Three kinds (``kinds``), each file named for what it shows:

- ``attention``: ``attention_<name>_image<i>`` (the paper's Fig. 1 and 4). For validation image i and each
  distilled level: the spatial attention A(F) of the teacher, of the undistilled student and of the DFD
  student, the disparity D = |A(F^T) - A(F^S)| between the teacher and the DFD student, and the HD/LD mask
  (HD where D >= P), computed from the runs' checkpoints with ``dfd.distill``'s own functions, with the DFD
  run's temperature, threshold and levels. The three A(F) of a level share one colour scale.
- ``l2_distance``: ``l2_distance_<name>`` (Fig. 3b). Per level, the distance between the teacher's map and the
  DFD student's over training, after the 1x1 alignment (without f_trans) and after f_trans (with it): the
  ``feature_l2/...`` values training logs in the run's ``history.jsonl`` (:data:`dfd.rundir.FEATURE_L2`).
- ``tables``: ``table<N>_paper_vs_reproduced`` per collected table (``<tables_dir>/table<N>*.csv``, as
  scripts/collect.py writes them): each row's paper number against the reproduced mean, with the seeds'
  standard deviation as error bar; a bar of one seed has none and says n=1.

The keys and their defaults are ``conf/figures.yaml``'s. As for the tables, figures go into
``experiments/results/`` from committed code only (``allow_dirty=true``: anyway). ``wandb=true`` also
logs every figure to W&B as an image. A kind that cannot be drawn (no run, no logged values, no table)
is named with the reason, the others are still written, and the exit status is 1.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dfd.engine.config import CONF_DIR
from dfd.results.formats import SMOKE_WARNING, metric_column, scale_of
from dfd.rundir import CHECKPOINT, FEATURE_L2_KINDS, HISTORY_FILE, atomic_write

from .common import UsageError, refuse_uncommitted, run_program

log = logging.getLogger(__name__)
KINDS = ("attention", "l2_distance", "tables")
RUN_KEYS = ("teacher_run", "student_run", "dfd_run")
PATH_KEYS = ("runs_root", "demo_dir", *RUN_KEYS, "tables_dir", "out_dir")
BOOL_KEYS = ("allow_dirty", "wandb")
FORMATS = ("png", "pdf")


class Skipped(Exception):
    """A figure that cannot be drawn; the message says why."""


# ----------------------------------------------------------------------------- arguments


def defaults() -> dict[str, Any]:
    """The keys of figures.py and their defaults (``conf/figures.yaml``)."""
    return yaml.safe_load((CONF_DIR / "figures.yaml").read_text(encoding="utf-8"))


def parse(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments over the defaults; a :class:`UsageError` names a bad key or value."""
    own = defaults()
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r}")
        if key not in own:
            raise UsageError(f"{key}={text}: unknown key; the keys are {', '.join(own)} (conf/figures.yaml)")
        own[key] = (text or None) if key in PATH_KEYS else yaml.safe_load(text)
    kinds = own["kinds"] if isinstance(own["kinds"], list) else [own["kinds"]]
    if not kinds or any(k not in KINDS for k in kinds):
        raise UsageError(f"kinds={own['kinds']!r} is invalid: expected a list of {', '.join(KINDS)}")
    own["kinds"] = kinds
    if not isinstance(own["images"], int) or isinstance(own["images"], bool) or own["images"] < 1:
        raise UsageError(f"images={own['images']!r} is invalid: expected a positive integer")
    for key in BOOL_KEYS:
        if not isinstance(own[key], bool):
            raise UsageError(f"{key}={own[key]!r} is invalid: expected true or false")
    demo = Path(own["demo_dir"] or Path(own["runs_root"]) / "smoke" / "demo")
    for key in RUN_KEYS:
        own[key] = Path(own[key] or demo / key.removesuffix("_run"))
    return own


# ----------------------------------------------------------------------------- files


def save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    paths = [atomic_write(out_dir / f"{stem}.{ext}", lambda f, ext=ext: fig.savefig(f, format=ext, dpi=150, bbox_inches="tight"))
             for ext in FORMATS]
    plt.close(fig)
    return paths


def load_run(run_dir: Path, key: str) -> tuple[Any, Any, dict[str, Any]]:
    """The evaluated model of the run in ``run_dir`` (eval mode, CPU), its config and its checkpoint."""
    from dfd.engine.checkpoint import evaluated_state
    from dfd.engine.config import config_from_plain
    from dfd.models import build_model, fit_state_dict, read_checkpoint, without_pretrained

    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise Skipped(f"{key}={run_dir}: no {CHECKPOINT} there (train the demo first: make demo)")
    ckpt = read_checkpoint(path, key)
    if not isinstance(ckpt.get("config"), Mapping):
        raise Skipped(f"{key}={run_dir}: {path} holds no run config; it was not written by a training run")
    cfg = config_from_plain(dict(ckpt["config"]))
    model = build_model(without_pretrained(cfg.model), ckpt["num_classes"], cfg.role)
    fit_state_dict(model, evaluated_state(ckpt, key, repr(str(path))), key, repr(str(path)))
    return model.eval(), cfg, ckpt


# ----------------------------------------------------------------------------- Fig. 1 / 4: attention


def dfd_settings(cfg: Any, key: str) -> dict[str, Any]:
    """The DFD run's levels, temperature and threshold (as its loss was built: ``method_params``)."""
    from dfd.engine.config import distill_levels, method_params

    if "dfd" not in cfg.distill.methods:
        raise Skipped(f"{key}: the run distils with {cfg.distill.methods or 'nothing'}, not dfd")
    params = method_params(cfg)["dfd"]
    return {"levels": list(params.get("levels") or distill_levels(cfg)), "temperature": params["temperature"],
            "threshold": params["threshold"]}


def attention_maps(models: Mapping[str, Any], batch: Any, levels: list[str], temperature: float,
                   threshold: Any) -> dict[str, dict[str, Any]]:
    """Per level: A(F) of each model (``teacher``, ``student``, ``dfd``), D(teacher, dfd) and the HD mask."""
    import torch

    from dfd.distill import disparity_map, region_mask, spatial_attention

    with torch.no_grad():
        feats = {who: model.distill_maps(batch, levels) for who, model in models.items()}
        out = {}
        for level in levels:
            teacher, dfd = feats["teacher"][level].float(), feats["dfd"][level].float()
            disparity = disparity_map(dfd, teacher, temperature)
            out[level] = {
                "A(F) teacher": spatial_attention(teacher, temperature),
                "A(F) student": spatial_attention(feats["student"][level].float(), temperature),
                "A(F) DFD student": spatial_attention(dfd, temperature),
                "D (teacher, DFD)": disparity,
                "HD mask (D ≥ P)": region_mask(disparity, threshold),
            }
    return out


def attention_figure(image: Any, maps: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    """One row per level: the image, then each map of :func:`attention_maps`."""
    import matplotlib.pyplot as plt

    levels = list(maps)
    names = list(maps[levels[0]])
    fig, axes = plt.subplots(len(levels), len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.2 * len(levels)), squeeze=False)
    for r, level in enumerate(levels):
        shown = {name: maps[level][name][0, 0].cpu().numpy() for name in names}
        top = max(float(v.max()) for n, v in shown.items() if n.startswith("A(F)"))
        axes[r, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[r, 0].set_ylabel(level)
        for c, name in enumerate(names, start=1):
            scale = {"vmin": 0, "vmax": top} if name.startswith("A(F)") else {"vmin": 0, "vmax": 1} if "mask" in name else {}
            axes[r, c].imshow(shown[name], cmap="gray" if "mask" in name else "jet", **scale)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return fig


def draw_attention(own: Mapping[str, Any]) -> list[Path]:
    """``attention_<name>_image<i>`` for the first ``images`` validation images (module docstring)."""
    from dfd.engine.checkpoint import check_labels
    from dfd.engine.setup import datasets
    from dfd.models import get_family

    runs = {who: load_run(own[f"{who}_run"], f"{who}_run") for who in ("teacher", "student", "dfd")}
    cfg = runs["dfd"][1]
    settings = dfd_settings(cfg, f"dfd_run={own['dfd_run']}")
    _, val_set = datasets(cfg, get_family(cfg.model.family, "dfd_run"))
    for who, (_, _, ckpt) in runs.items():
        check_labels(ckpt, val_set, f"{who}_run={own[f'{who}_run']}")
    models = {who: model for who, (model, _, _) in runs.items()}
    paths = []
    for i in range(min(own["images"], len(val_set))):
        image, target = val_set[i]
        batch = models["dfd"].prepare([image], [target], "cpu")
        maps = attention_maps(models, batch, **settings)
        title = (f"{own['name']}: validation image {i}; threshold {settings['threshold'].kind}, "
                 f"T={settings['temperature']:g}; D and mask between the teacher and the DFD student")
        paths += save(attention_figure(image, maps, title), Path(own["out_dir"]), f"attention_{own['name']}_image{i}")
    return paths


# ----------------------------------------------------------------------------- Fig. 3b: L2 distance


def feature_l2_curves(history: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"<method>/<level>": {kind: [(step, value), ...]}}`` from a run's ``history.jsonl`` (last value per step)."""
    by_step: dict[tuple[str, str], dict[int, float]] = {}
    for line in history.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        for key, value in record.items():
            parts = key.split("/")
            if parts[0] == "feature_l2" and len(parts) == 4 and parts[3] in FEATURE_L2_KINDS and value is not None:
                by_step.setdefault((f"{parts[1]}/{parts[2]}", parts[3]), {})[int(record["step"])] = float(value)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (name, kind), values in sorted(by_step.items()):
        curves.setdefault(name, {})[kind] = sorted(values.items())
    return curves


def draw_l2_distance(own: Mapping[str, Any]) -> list[Path]:
    """``l2_distance_<name>`` from the DFD run's history (module docstring)."""
    import matplotlib.pyplot as plt

    history = Path(own["dfd_run"]) / HISTORY_FILE
    if not history.is_file():
        raise Skipped(f"dfd_run={own['dfd_run']}: no {HISTORY_FILE} there (train the demo first: make demo)")
    curves = feature_l2_curves(history)
    if not curves:
        raise Skipped(f"{history} has no feature_l2/ values: the run was trained before training logged them; "
                      "train it again (remove the run directory, then make demo)")
    fig, ax = plt.subplots(figsize=(6, 4))
    style = {"aligned": ("-", "without f_trans"), "f_trans": ("--", "with f_trans")}
    for i, (name, kinds) in enumerate(curves.items()):
        for kind, points in kinds.items():
            steps, values = zip(*points)
            ax.plot(steps, values, style[kind][0], color=f"C{i}", label=f"{name} {style[kind][1]}")
    ax.set(xlabel="iteration", ylabel="mean squared distance to the teacher's map", yscale="log",
           title=f"{own['name']}: teacher-student feature distance ({own['dfd_run']})")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return save(fig, Path(own["out_dir"]), f"l2_distance_{own['name']}")


# ----------------------------------------------------------------------------- one chart per table


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else float("nan")


def table_figure(rows: list[dict[str, str]], metrics: list[str], title: str) -> Any:
    """Per metric, paper and reproduced bars per row; error bars are the seeds' std; n=1 and missing marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.7 * len(rows)), 2.6 * len(metrics) + 1.0), sharex=True,
                             squeeze=False)
    x = range(len(rows))
    for ax, name in zip(axes[:, 0], metrics):
        paper = [_float(r[metric_column(name, "paper")]) for r in rows]
        mean = [_float(r[metric_column(name, "mean")]) for r in rows]
        std = [_float(r[metric_column(name, "std")]) for r in rows]
        ax.bar([i - 0.2 for i in x], paper, 0.4, label="paper", color="0.75")
        ax.bar([i + 0.2 for i in x], mean, 0.4, yerr=std, capsize=3, label="reproduced (mean ± std over seeds)", color="C0")
        for i, row in enumerate(rows):
            note = "—" if mean[i] != mean[i] else f"n={row['n']}" if row["n"] in ("0", "1") or std[i] != std[i] else ""
            ax.annotate(note, (i + 0.2, 0 if mean[i] != mean[i] else mean[i]), ha="center", va="bottom", fontsize=7)
        ax.set_ylabel(name)
    axes[-1, 0].set_xticks(list(x), [r["row_id"] for r in rows], rotation=45, ha="right", fontsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0, 0].set_title(title, fontsize=9)
    return fig


def draw_tables(own: Mapping[str, Any]) -> list[Path]:
    """``<stem>_paper_vs_reproduced`` for every collected ``table<N>*.csv`` in ``tables_dir``."""
    tables = sorted(Path(own["tables_dir"]).glob("table*.csv"))
    if not tables:
        raise Skipped(f"tables_dir={own['tables_dir']}: no collected table<N>.csv there (make collect-table-N)")
    paths = []
    suffix = metric_column("", "paper")
    for path in tables:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames or []
        metrics = [c[: -len(suffix)] for c in columns if c.endswith(suffix)]
        if not rows or not metrics:
            raise Skipped(f"{path}: no rows or no metric columns (*{suffix}); is it a table collect.py wrote?")
        stem = path.stem.replace(".", "_")
        scale = scale_of(path.with_suffix(".md"))
        title = f"{path.name} ({scale or 'unknown'} scale): paper against reproduced (error bars: std over seeds)"
        if scale == "smoke":
            title += "\n" + SMOKE_WARNING.split(". ")[0] + ": not comparable with the paper"
        paths += save(table_figure(rows, metrics, title), Path(own["out_dir"]), f"{stem}_paper_vs_reproduced")
    return paths


# ----------------------------------------------------------------------------- the program

DRAW = {"attention": draw_attention, "l2_distance": draw_l2_distance, "tables": draw_tables}


def log_wandb(paths: list[Path], own: Mapping[str, Any]) -> None:
    """Every PNG as a ``wandb.Image`` in run ``figures-<name>`` (job_type ``figures``)."""
    import wandb

    run = wandb.init(project=own["wandb_project"], mode=own["wandb_mode"], name=f"figures-{own['name']}", job_type="figures")
    try:
        run.log({p.stem: wandb.Image(str(p)) for p in paths if p.suffix == ".png"})
    finally:
        run.finish()


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    own = parse(argv)
    refuse_uncommitted(own["out_dir"], own["allow_dirty"])
    import matplotlib

    matplotlib.use("Agg")
    written, skipped = [], []
    for kind in own["kinds"]:
        try:
            written += DRAW[kind](own)
        except Skipped as why:
            skipped.append(f"{kind}: {why}")
    for path in written:
        print(f"wrote {path}")
    for line in skipped:
        print(f"figures.py: not drawn: {line}", file=sys.stderr)
    if own["wandb"] and written:
        log_wandb(written, own)
    return 1 if skipped else 0


def main(argv: list[str] | None = None) -> int:
    """``figures.py key=value ...``; 2: a user error, 1: some figure could not be drawn (named)."""
    return run_program("figures.py", _main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
