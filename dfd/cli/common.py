"""What the programs share: user errors reported as one line, and the ``key=value`` arguments of
``reproduce.py`` and ``collect.py`` (their own keys; every other ``key=value`` is a training override).

A user error (a bad config value, missing data or weights, a component not built yet, a malformed
table spec, a run directory in use, a bad argument) prints one message and exits non-zero,
without a Python traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback, as it does for Hydra.
"""
from __future__ import annotations

import atexit
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dfd.data import DATASETS, DataError
from dfd.engine.config import ConfigError
from dfd.engine.evaluators import primary_metric
from dfd.engine.runinfo import code_version
from dfd.engine.sweep import SweepError
from dfd.errors import ComponentNotImplemented
from dfd.models import WeightsError, get_family
from dfd.results import uncommitted_refusal
from dfd.results.spec import SpecError, default_experiments_dir
from dfd.rundir import SCALES, RunDirBusy

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A program's own argument is wrong; the message names it."""


USER_ERRORS = (ConfigError, DataError, WeightsError, ComponentNotImplemented, SpecError, RunDirBusy, UsageError, SweepError)


class UserError(CompactHydraException):
    """A user error raised out of a Hydra app: Hydra prints its message alone (the traceback only with
    ``HYDRA_FULL_ERROR=1``) and exits with status 1."""


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def command_line() -> str:
    """The command this process runs, as the user could type it again."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def run_program(program: str, main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run ``main(argv)``: a user error prints ``<program>: error: <message>`` and returns 2; Ctrl-C returns 130."""
    try:
        return main(argv)
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as err:
        if full_errors():
            raise
        print(f"{program}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if full_errors():
            raise
        print(f"\n{program}: interrupted. Every unfinished run keeps its last checkpoint; the same command resumes "
              f"them: {command_line()}", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- the end of a multirun


def _job_metric(config: DictConfig) -> str:
    """The name of the metric a training job returns (``trainer.objective``, else its task's primary metric)."""
    try:
        return config.trainer.objective or primary_metric(get_family(config[config.train.role].family).task)
    except Exception:  # a job whose config is broken: its error says why
        return "objective"


class JobSummary(Callback):
    """Hydra callback (``hydra.callbacks.job_summary``): at the end of a multirun, one line per job,
    with its overrides, its status and its main metric (jobs run by this process: basic launcher)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sweep_dir = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = str(config.hydra.sweep.dir)
        atexit.register(self.report)  # Hydra skips on_multirun_end when a job failed: the lines come at exit then

    def report(self) -> None:
        if self.lines:
            print(f"multirun {self.sweep_dir}, one line per job:\n" + "\n".join(self.lines), flush=True)
            self.lines = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        overrides = " ".join(job_return.overrides or []) or "(no overrides)"
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            result = f"{_job_metric(config)} {value:.2f}" if isinstance(value, (int, float)) else "not evaluated"
            self.lines.append(f"  {overrides}: finished, {result}")
        else:
            err = job_return._return_value  # the exception; .return_value would raise it
            self.lines.append(f"  {overrides}: failed, {str(err).splitlines()[0] if str(err) else type(err).__name__}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.report()


# ----------------------------------------------------------------------------- key=value arguments

PATH_ARGS = ("runs_root", "data_root", "teacher", "out_dir", "experiments_dir")
BOOL_ARGS = ("wandb", "dry_run", "force", "print")


def available_tables(experiments_dir: str | os.PathLike | None = None) -> list[int]:
    """The numbers N of the table specs ``experiments/tableN.yaml``."""
    folder = Path(experiments_dir) if experiments_dir else default_experiments_dir()
    return sorted(int(p.stem[5:]) for p in folder.glob("table*.yaml") if p.stem[5:].isdigit())


def _table(value: Any, experiments_dir: Any, allow_path: bool) -> int | str:
    tables = available_tables(experiments_dir)
    if isinstance(value, str) and value.removeprefix("table").isdigit():
        value = int(value.removeprefix("table"))
    if isinstance(value, int) and not isinstance(value, bool) and value in tables:
        return value
    if allow_path and isinstance(value, str) and Path(value).is_file():
        return value
    where = f"{experiments_dir or 'experiments'}/table<N>.yaml"
    raise UsageError(f"table={value!r}: there is no such table; the tables are {', '.join(map(str, tables))} ({where})"
                     + (", or give the path of a table spec" if allow_path else ""))


def _seeds(value: Any) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        shown = "[" + ",".join(map(str, seeds)) + "]" if isinstance(value, list) else value
        raise UsageError(f"seeds={shown} is invalid: expected distinct integers, e.g. seeds=[0,1,2] (make: SEEDS=0,1,2)")
    return seeds


def _value(key: str, text: str) -> Any:
    if key in PATH_ARGS:
        return text or None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{key}={text!r} cannot be read as a value ({err.__class__.__name__})") from None


def parse_args(argv: Sequence[str], defaults: dict[str, Any], *, table_paths: bool = False,
               choices: dict[str, Sequence[str]] | None = None) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Split ``key=value`` arguments into the program's own keys (``defaults``), teacher checkpoints
    (``teacher=PATH`` for every teacher, ``teachers.<option>=PATH`` for one), and training overrides."""
    own, teachers, forward = dict(defaults), {}, []
    for arg in argv:
        if "=" not in arg:
            raise UsageError(f"expected key=value, got {arg!r}")
        key, text = arg.split("=", 1)
        if key.startswith("teachers."):
            teachers[key.split(".", 1)[1]] = text
        elif key in own:
            own[key] = _value(key, text)
        else:
            forward.append(arg)
    if own.get("table") is None:
        raise UsageError(f"table=N is required; the tables are {', '.join(map(str, available_tables(own.get('experiments_dir'))))}")
    own["table"] = _table(own["table"], own.get("experiments_dir"), table_paths)
    own["seeds"] = _seeds(own["seeds"])
    for key, allowed in {"scale": SCALES, **(choices or {})}.items():
        if own[key] not in allowed:
            raise UsageError(f"{key}={own[key]!r} is invalid: expected one of {', '.join(allowed)}")
    for key in BOOL_ARGS:
        if key in own and not isinstance(own[key], bool):
            raise UsageError(f"{key}={own[key]!r} is invalid: expected true or false")
    if own.get("teacher"):
        teachers["*"] = own["teacher"]
    for option, path in teachers.items():
        if not Path(path).is_file():
            raise UsageError(f"{'teacher' if option == '*' else 'teachers.' + option}={path!r}: file does not exist")
    if "data_root" in own:
        own["data_root"] = data_roots(own["data_root"])
    return own, teachers, forward


COCO_KINDS = ("coco", "coco_keypoints")  # the data kinds read from one COCO 2017 directory


def data_roots(value: Any) -> dict[str, str]:
    """``data_root``: a COCO 2017 directory (for every COCO kind) or ``{kind: directory, ...}``, as a mapping
    from real data kind to its checked directory; ``{}`` when unset (the synthetic sets)."""
    if not value:
        return {}
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = _value("data_root.mapping", value)
    real = sorted({e.twin for e in DATASETS.values() if e.twin})
    roots = {kind: value for kind in COCO_KINDS if kind in real} if isinstance(value, str) else value
    if not isinstance(roots, dict) or not roots:
        raise UsageError(f"data_root={value!r} is invalid: expected a directory or {{kind: directory}} with kinds among {', '.join(real)}")
    for kind, path in roots.items():
        key = "data_root" if isinstance(value, str) else f"data_root.{kind}"
        if kind not in real:
            raise UsageError(f"{key}: {kind!r} is not a real data kind; expected one of {', '.join(real)}")
        if not Path(str(path)).is_dir():
            raise UsageError(f"{key}={str(path)!r}: directory does not exist")
    return {kind: str(path) for kind, path in roots.items()}


def base_overrides(own: dict[str, Any], forward: Sequence[str], wandb: bool = False) -> list[str]:
    """The overrides every run of a table gets (teachers included); real data is per row (``data_root``:
    :func:`~dfd.engine.sweep.real_data_overrides`)."""
    base = [f"scale={own['scale']}", f"runs_root={own['runs_root']}"]
    if wandb:
        base += ["logger=wandb", f"logger.project={own['wandb_project']}"]
    return [*base, *forward]


def refuse_uncommitted(out_dir: str, allow_dirty: object) -> None:
    """Tables and figures go into ``experiments/results/`` from committed code only: a
    :class:`~dfd.cli.common.UsageError` when the tree is dirty there and ``allow_dirty`` is not true (the one
    check of collect.py, reproduce.py and figures.py; the rule is :func:`dfd.results.uncommitted_refusal`)."""
    if not isinstance(allow_dirty, bool):
        raise UsageError(f"allow_dirty={allow_dirty!r} is invalid: expected true or false")
    reason = uncommitted_refusal(out_dir, code_version(), allow_dirty)
    if reason:
        raise UsageError(reason)
