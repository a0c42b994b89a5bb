"""The run-directory contract: what a run directory holds, where runs live, and how files are written.

Training (``dfd.engine``), the table sweep and the collector (``dfd.results``) all use this
module, so each fact is written once. It imports nothing else of ``dfd`` and no torch.

Layout under ``<runs_root>``::

    <scale>/table<N>/<row>/seed<S>/      one run of a table row
    <scale>/table<N>/<row>/seed<S>.stale-<time>/   a run of that row with another config, moved aside
    <scale>/teachers/<name>/             a teacher trained for the tables, shared by them
    <scale>/single/<time>-<id>/          a single run started by hand
    <scale>/multirun/<time>-<id>/<n>/    a hand-started Hydra multirun

A run directory holds :data:`CONFIG_FILE` (the resolved config), :data:`CHECKPOINT`,
:data:`HISTORY_FILE` (training curves), :data:`LOG_FILE` (the whole log), :data:`METRICS_FILE`
when it finished or :data:`FAILED_FILE` when it failed, and :data:`LOCK_FILE` while a run holds
it. A row directory may hold :data:`NOT_IMPLEMENTED_FILE`.

A run's identity is :func:`config_digest`: its resolved config without :data:`VOLATILE_KEYS`,
with every path of :data:`PATH_KEYS` replaced by what it points to (:func:`path_identity`), renamed
keys under their old names (:data:`RENAMED_KEYS`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

import yaml

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
NOT_IMPLEMENTED_FILE = "not_implemented.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
LOG_FILE = "train.log"
LOCK_FILE = "run.lock"
WANDB_ID_FILE = "wandb_id.txt"
CHECKPOINT = Path("checkpoints") / "last.pth"
# history.jsonl keys of the distance between the teacher's map and the student's (the paper's Fig. 3b):
# the mean squared difference per element, after the 1x1 alignment ("aligned") and after f_trans ("f_trans").
FEATURE_L2 = "feature_l2/{method}/{level}/{kind}"
FEATURE_L2_KINDS = ("aligned", "f_trans")
TEMP_GLOB = ".*.tmp"  # what atomic_write leaves behind when the process is killed mid-write
STALE_NAME = "{name}.stale-{stamp}"  # a run directory with another config, moved aside by the sweep
REPLACED_PREFIX = "replaced-"  # trainer.overwrite=true: the replaced run's files, kept in <run dir>/replaced-<time>/

SCALES = ("smoke", "bench", "full")
TEACHERS_DIR = "teachers"
# Where collected tables and figures go, relative to a checkout: results, not code, so changes there
# do not make the code "dirty" (dfd.engine.runinfo.code_version; dfd.results.formats.results_dir).
RESULTS_DIR = "experiments/results"
ROW_SEED = "{row}/seed{seed}"  # a run of a table row, under the table's directory

# Config keys that change where or how verbosely a run works, not what it computes: left out of
# the digest, so a run may resume with other values of them.
VOLATILE_KEYS = (
    "logger", "runs_root", "trainer.progress", "trainer.log_interval", "trainer.checkpoint_interval",
    "trainer.threads", "trainer.overwrite", "trainer.device", "trainer.evaluate", "data.num_workers",
    "data.eval_batch_size", "data.verify_images",
    "distill.dfd.sparse_max_fraction",  # sparse or dense f_trans: the same loss (tests/test_distill_sparse.py)
    "trainer.compile_losses",  # compiled or eager losses: the same computation
    "trainer.cpu_malloc",  # how freed host memory is kept: the same computation
    "trainer.channels_last",  # the weights' memory layout: the same computation (float rounding aside, as threads)
)
# Config nodes only the runs of one data pipeline set (yolo, topdown, segmentation): null elsewhere, and left
# out of the digest when null, so adding a pipeline changes no digest of the runs before it.
PIPELINE_KEYS = ("data.yolo", "data.keypoints", "data.segmentation")
# Config keys of the start-of-training calibration of the distillation weights (dfd/engine/calibrate.py): left out
# of the digest of a run that does not distil, and of every run while the calibration is off, so adding it changed
# no digest of the runs before it.
CALIBRATION_KEYS = ("distill.start_ratio", "distill.calibration_batches")
# Config keys renamed after runs were recorded under their old names (new name -> old name): the digest sees
# the old name, so a renaming changes no run's identity. public.box_ap became public.metric when the pose and
# segmentation teachers were pinned (their published metric is keypoint AP, mIoU).
RENAMED_KEYS = {"teacher.public.metric": "teacher.public.box_ap", "student.public.metric": "student.public.box_ap"}
# Families whose published checkpoint (<role>.public.*) was pinned after runs of them were recorded: the digest
# sees their public.* as null, as it did then. A pin says where the published checkpoint is and what it scores;
# it changes what a run computes only through teacher.checkpoint=auto, which is resolved to the converted file
# (identified by its sha256, PATH_KEYS) before any digest is taken. Pins of the detection teachers were in the
# digest from the start, and stay there.
LATE_PINNED_FAMILIES = ("simplebaseline", "pspnet", "yolov6")
# Config keys naming a file or directory: compared by what they point to, not by their spelling.
PATH_KEYS = ("data.root", "teacher.checkpoint", "teacher.weights", "student.checkpoint", "student.weights")
# data.kind values whose data is generated from the config: their data.root is only a cache location.
GENERATED_DATA = ("synthetic",)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


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


# ----------------------------------------------------------------------------- identity of paths

_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_TREE_HASHES: dict[tuple, str] = {}


def run_identity(digest: str) -> str:
    """What the checkpoint of the run with config digest ``digest`` is, for the digests of the runs using it."""
    return f"run:{digest}"


def _run_digest(run_dir: Path) -> str | None:
    """The config digest of the run in ``run_dir``: its metrics.json's, else its config.yaml's."""
    try:
        recorded = read_json(run_dir / METRICS_FILE).get("config_digest")
        if recorded:
            return str(recorded)
    except (OSError, ValueError):
        pass
    config = read_config(run_dir)
    return config_digest(config) if config else None


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _tree(path: Path, depth: int) -> Iterator[tuple[str, int]]:
    """(relative path, size) of the visible files of ``path`` down to ``depth`` levels."""
    stack = [(path, 1)]
    while stack:
        folder, level = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if level < depth:
                        stack.append((Path(entry.path), level + 1))
                elif entry.is_file():
                    yield os.path.relpath(entry.path, path), entry.stat().st_size


def _tree_identity(path: Path) -> str:
    """A fingerprint of a directory's contents (names and sizes of its files two levels down)."""
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    key = (str(path), *sorted((str(p), p.stat().st_mtime_ns) for p in [path, *subdirs]))
    if key not in _TREE_HASHES:
        digest = hashlib.sha256()
        for rel, size in sorted(_tree(path, 2)):
            digest.update(f"{rel}\0{size}\n".encode())
        _TREE_HASHES[key] = digest.hexdigest()[:16]
    return f"tree:{_TREE_HASHES[key]}"


def path_identity(value: Any, identities: Mapping[str, str] | None = None) -> Any:
    """What a path in the config points to, whatever its spelling (relative, ``./``, absolute, a link).

    ``identities`` (resolved path -> identity) names files that do not exist yet (a teacher still
    to train). The checkpoint of a run of this repository is that run (:func:`run_identity`: a
    retrained teacher with the same config is the same teacher); another file is its sha256; a
    directory the names and sizes of its files. A value that names nothing is kept as it is.
    """
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser().resolve()
    if identities and str(path) in identities:
        return identities[str(path)]
    if path.is_file():
        if path.parts[-2:] == CHECKPOINT.parts:
            digest = _run_digest(path.parents[1])
            if digest:
                return run_identity(digest)
        return f"sha256:{_sha256(path)}"
    if path.is_dir():
        return _tree_identity(path)
    return value


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


def _old_names(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flattened config with its renamed keys under their old names (:data:`RENAMED_KEYS`)."""
    return {RENAMED_KEYS.get(k, k): v for k, v in flat.items()}


def canonical_config(config: Mapping[str, Any], identities: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`result_config` under the old names of :data:`RENAMED_KEYS`, the public pins of
    :data:`LATE_PINNED_FAMILIES` null, and the paths of :data:`PATH_KEYS` replaced by :func:`path_identity`."""
    flat = {k: v for k, v in _old_names(result_config(config)).items() if not (k in PIPELINE_KEYS and v is None)}
    for role in ("teacher", "student"):
        if flat.get(f"{role}.family") in LATE_PINNED_FAMILIES:
            flat.update({k: None for k in flat if k.startswith(f"{role}.public.")})
    if flat.get("distill.start_ratio") is None or flat.get("train.role") == "teacher" or not flat.get("distill.methods"):
        for key in CALIBRATION_KEYS:
            flat.pop(key, None)
    for key in PATH_KEYS:
        if flat.get(key):
            flat[key] = path_identity(flat[key], identities)
    if flat.get("data.kind") in GENERATED_DATA and "data.root" in flat:
        flat["data.root"] = None
    return flat


def config_digest(config: Mapping[str, Any], identities: Mapping[str, str] | None = None) -> str:
    """A short digest of :func:`canonical_config` (a plain, resolved config mapping)."""
    text = json.dumps(canonical_config(config, identities), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], identities: Mapping[str, str] | None = None) -> list[str]:
    """``key: old -> new`` for every key of the digest that differs (paths by what they point to)."""
    a, b = _old_names(flatten(old)), _old_names(flatten(new))
    ca, cb = canonical_config(old, identities), canonical_config(new, identities)
    new_names = {v: k for k, v in RENAMED_KEYS.items()}
    out = []
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key) == cb.get(key):
            continue
        if a.get(key) == b.get(key):
            out.append(f"{new_names.get(key, key)}: {a.get(key)!r} (what it points to has changed)")
        else:
            out.append(f"{new_names.get(key, key)}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


# ----------------------------------------------------------------------------- the state of a run directory

RunState = Literal["absent", "unfinished", "finished", "stale"]


def read_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The resolved config a run wrote (:data:`CONFIG_FILE`), or None; ``{}`` when it is unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write the resolved config (plain values) as :data:`CONFIG_FILE`; :func:`read_config` reads it back exactly."""
    return atomic_write_text(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))


def run_state(run_dir: str | os.PathLike, digest: str, identities: Mapping[str, str] | None = None) -> RunState:
    """What ``run_dir`` holds for a run with config digest ``digest``.

    ``finished``: its metrics.json has this digest; ``unfinished``: a run of this config started
    there (interrupted or failed: it resumes); ``stale``: a run of another config is there;
    ``absent``: no run started there.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        try:
            recorded = read_json(run_dir / METRICS_FILE).get("config_digest")
        except (OSError, ValueError):
            return "stale"
        return "finished" if recorded == digest else "stale"
    config = read_config(run_dir)
    if config is None:
        return "absent"
    return "unfinished" if config and config_digest(config, identities) == digest else "stale"


# ----------------------------------------------------------------------------- one run per directory


class RunDirBusy(RuntimeError):
    """Another run holds the run directory; the message names it."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a run that is starting"
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_at')}: "
            f"{info.get('command', '?')}")


class RunLock:
    """The run directory's lock (``fcntl.flock`` on :data:`LOCK_FILE`), held for the whole life of a run.

    The lock file names its holder (pid, host, start time, command) and is removed on release;
    a second run in the directory is refused at once (:class:`RunDirBusy`) with that holder named.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirBusy(f"{self.run_dir} is in use by another run ({holder}); wait for it to end, "
                                 "or give this run another directory") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it while we opened it: lock the new one
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_fresh(run_dir: str | os.PathLike) -> bool:
    """No run has written into ``run_dir`` yet: it does not exist, or holds at most a lock file."""
    run_dir = Path(run_dir)
    return not run_dir.is_dir() or all(p.name == LOCK_FILE for p in run_dir.iterdir())


def discard(run_dir: str | os.PathLike, lock: RunLock | None) -> None:
    """Remove what a run that never started wrote in a fresh ``run_dir`` (its log), release its lock,
    and remove the directory if nothing else is in it."""
    run_dir = Path(run_dir)
    (run_dir / LOG_FILE).unlink(missing_ok=True)
    if lock is not None:
        lock.release()
    try:
        run_dir.rmdir()
    except OSError:
        pass  # not empty: something else is there, and it stays


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of atomic writes cut short by a kill (``checkpoints/.last.pth.*.tmp``);
    call it holding the run's lock."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT.parent):
        for path in folder.glob(TEMP_GLOB) if folder.is_dir() else []:
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _free(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def move_aside(run_dir: str | os.PathLike) -> Path:
    """Rename a run directory holding a run of another config to ``<name>.stale-<time>`` (never deleted).

    Refused (:class:`RunDirBusy`) while a run holds it.
    """
    run_dir = Path(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        target = _free(run_dir.with_name(STALE_NAME.format(name=run_dir.name, stamp=_stamp())))
        run_dir.rename(target)
        lock.run_dir = target
    finally:
        lock.release()
    return target


def move_contents_aside(run_dir: str | os.PathLike) -> Path:
    """Move a run's files into ``<run_dir>/replaced-<time>/`` (``trainer.overwrite=true``); the lock stays."""
    run_dir = Path(run_dir)
    target = _free(run_dir / f"{REPLACED_PREFIX}{_stamp()}")
    target.mkdir()
    for path in run_dir.iterdir():
        if path.name != LOCK_FILE and not path.name.startswith(REPLACED_PREFIX):
            path.rename(target / path.name)
    return target


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

    A crash never leaves half a file (a kill may leave the temporary file, :data:`TEMP_GLOB`,
    which :func:`remove_temp_files` removes). A new file gets the mode any file the user writes gets
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
