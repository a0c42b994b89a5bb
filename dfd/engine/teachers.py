"""The paper's teachers, pinned: fetched from their public address, checked, converted, verified.

Each ``conf/teacher/*`` names its public checkpoint (``public.url``, the sha256 prefix OpenMMLab
puts in the file name, ``public.metric``: the published value of the task's primary metric, box AP,
keypoint AP or mIoU). ``teacher.checkpoint=auto`` fetches it into ``$DFD_CACHE/teachers/`` (once),
checks the hash, converts it with the family's OpenMMLab mapping (``dfd.engine.convert``) and uses the
result; a family whose published file cannot be converted here (YOLOv6's pickled release models), or a
teacher whose options cannot take it (PSPNet without ``stem=v1c``), is refused before anything is
fetched, with what to do. ``teacher.verify=true`` evaluates the teacher before distilling and refuses
one more than ``teacher.verify_tolerance`` below ``public.metric``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch.hub

from dfd.models import WeightsError, get_family

from .config import Config, ConfigError
from .convert import convert_mmdet_checkpoint

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("DFD_CACHE", ".cache")) / "teachers"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, sha256: str | None, key: str = "teacher.public.url") -> Path:
    """The file at ``url`` in the cache, downloaded once; its sha256 must start with ``sha256``."""
    dst = cache_dir() / Path(url.split("?")[0]).name
    if dst.is_file() and (not sha256 or _sha256(dst).startswith(sha256)):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s", url)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256 or None, progress=False)
    except RuntimeError as err:  # torch's hash check
        raise WeightsError(f"{key}={url!r}: the file's sha256 does not start with {sha256!r}; not the published checkpoint") from err
    except OSError as err:
        raise WeightsError(f"{key}={url!r} could not be fetched ({err}); download it elsewhere and give "
                           "teacher.checkpoint=<the file converted by scripts/convert_mmdet.py>") from err
    return dst


def resolve_checkpoint(cfg: Config) -> Config:
    """``teacher.checkpoint=auto``: the pinned public checkpoint, fetched and converted; the config with its path."""
    options = cfg.teacher
    if options.checkpoint != "auto":
        return cfg
    public = options.public
    if not public.url:
        raise ConfigError(f"teacher.checkpoint='auto' needs teacher.public.url: conf/teacher/ names no public "
                          f"checkpoint for this {options.family} teacher")
    _check_convertible(options)
    source = fetch(public.url, public.sha256)
    converted = source.with_name(source.stem + ".dfd.pth")
    if not converted.is_file():
        convert_mmdet_checkpoint(source, converted, _as_teacher_run(cfg))
    options.checkpoint = str(converted)
    return cfg


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value)


def _check_convertible(options: Any) -> None:
    """Refuse, before fetching, a published checkpoint this teacher cannot take: a family with no converter
    (what to do instead: ``Family.convert_by_hand``), or options other than the checkpoint's (``Family.mmdet_options``)."""
    family = get_family(options.family, "teacher")
    if family.from_mmdet is None:
        how = family.convert_by_hand or "converting its published checkpoint is not written yet"
        raise ConfigError(f"teacher.checkpoint='auto' cannot convert the published {family.name} checkpoint "
                          f"{options.public.url}: {how}")
    wrong = {k: v for k, v in family.mmdet_options.items() if getattr(options, k) != v}
    if wrong:
        built = ", ".join(f"{k}={_yaml(v)}" for k, v in family.mmdet_options.items())
        raise ConfigError(f"teacher.checkpoint='auto': the published {family.name} checkpoint takes a model with {built}; "
                          "set " + " ".join(f"teacher.{k}={_yaml(v)}" for k, v in wrong.items()))


def _as_teacher_run(cfg: Config) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, role="teacher"))


def verify(metrics: dict[str, Any], options: Any, metric: str) -> None:
    """Refuse a teacher more than ``verify_tolerance`` below its published ``metric`` (the task's primary one)."""
    expected = options.public.metric
    if expected is None:
        raise ConfigError(f"teacher.verify=true needs teacher.public.metric, the {metric} the teacher must reach")
    got = metrics.get(metric)
    if got is None or got < expected - options.verify_tolerance:
        raise ConfigError(f"teacher.verify: the teacher scores {metric}={got} on the validation set, its published "
                          f"{expected} (tolerance {options.verify_tolerance}); it did not load as published")
    log.info("teacher verified: %s=%.2f (published %g)", metric, got, expected)
