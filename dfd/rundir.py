"""The run-directory contract: what a run directory holds, where runs live, and how files are written.

Training (``dfd.engine``), the table sweep and the collector (``dfd.results``) all use this
module, so each fact is written once. It imports nothing else of ``dfd`` and no torch.

Layout under ``<runs_root>``::

    <scale>/table<N>/<row>/seed<S>/      one run of a table row
    <scale>/teachers/<name>/             a teacher trained for the tables, shared by them
    <scale>/single/<time>-<id>/          a single run started by hand
    <scale>/multirun/<time>-<id>/<n>/    a hand-started Hydra multirun

A run directory holds :data:`CONFIG_FILE` (the resolved config), :data:`CHECKPOINT`,
:data:`HISTORY` (training curves), :data:`METRICS_FILE` when it finished or
:data:`FAILED_FILE` when it failed. A row directory may hold :data:`NOT_IMPLEMENTED_FILE`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
NOT_IMPLEMENTED_FILE = "not_implemented.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
WANDB_ID_FILE = "wandb_id.txt"
CHECKPOINT = Path("checkpoints") / "last.pth"

SCALES = ("smoke", "full")
TEACHERS_DIR = "teachers"
ROW_SEED = "{row}/seed{seed}"  # a run of a table row, under the table's directory

# Config keys that change where or how verbosely a run works, not what it computes: left out of
# the digest, so a run may resume with other values of them.
VOLATILE_KEYS = (
    "logger", "runs_root", "trainer.progress", "trainer.log_interval", "trainer.checkpoint_interval",
    "trainer.threads", "trainer.overwrite", "trainer.device", "trainer.evaluate", "data.num_workers",
    "data.eval_batch_size",
)


# ----------------------------------------------------------------------------- layout


def table_dir(runs_root: str | os.PathLike, scale: str, table: int) -> Path:
    """``<runs_root>/<scale>/table<N>``."""
    return Path(runs_root) / scale / f"table{table}"


def row_dir(runs_root: str | os.PathLike, scale: str, table: int, row: str) -> Path:
    """``<runs_root>/<scale>/table<N>/<row>``."""
    return table_dir(runs_root, scale, table) / row


def seed_dir(runs_root: str | os.PathLike, scale: str, table: int, row: str, seed: int) -> Path:
    """``<runs_root>/<scale>/table<N>/<row>/seed<S>``."""
    return table_dir(runs_root, scale, table) / ROW_SEED.format(row=row, seed=seed)


def teacher_dir(runs_root: str | os.PathLike, scale: str, name: str) -> Path:
    """``<runs_root>/<scale>/teachers/<name>``."""
    return Path(runs_root) / scale / TEACHERS_DIR / name


# ----------------------------------------------------------------------------- digest


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config without :data:`VOLATILE_KEYS`: what determines a run's result."""
    return {k: v for k, v in flatten(config).items()
            if not any(k == p or k.startswith(p + ".") for p in VOLATILE_KEYS)}


def config_digest(config: Mapping[str, Any]) -> str:
    """A short digest of :func:`result_config` (a plain, resolved config mapping)."""
    text = json.dumps(result_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every flattened key that differs."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------- writing


def _file_mode(path: Path) -> int:
    """An existing file keeps its mode; a new one gets 0o666 minus the umask (mkstemp alone makes 0o600)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``.

    A crash never leaves half a file. A new file gets the mode any file the user writes gets
    (0o666 minus the umask, typically 0644), not ``mkstemp``'s private 0600; a replaced one keeps its mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (indented, UTF-8, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError when the top level is not an object."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is not a JSON object")
    return data
