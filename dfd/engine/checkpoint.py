"""Checkpoints: written atomically, read back for resumption, and loaded as teachers or for evaluation.

A checkpoint (``<run dir>/checkpoints/last.pth``) holds the model's weights (``model``), the EMA's
(``ema``, when the schedule keeps one: then those are the evaluated weights), the distillation
modules, optimizer, scheduler, scaler and RNG states, the iteration, whether the run finished, and
what defines the model: ``family``, ``model_config`` (its options), ``num_classes``,
``label_to_category``, and the run's whole ``config`` with its digest.
"""
from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dfd.models import arch_options, build_model, fit_state_dict, read_checkpoint, state_dict_of, without_pretrained
from dfd.rundir import atomic_write

from .config import ConfigError


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluated_state(ckpt: Mapping[str, Any], key: str = "checkpoint", source: str = "") -> dict[str, Tensor]:
    """The weights a run evaluated: its EMA's when it kept one, else the model's."""
    ema = ckpt.get("ema")
    if ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return state_dict_of(ckpt, key, source)


def _check_teacher_checkpoint(ckpt: Mapping[str, Any], options: Any, num_classes: int, path: str) -> None:
    key = f"teacher.checkpoint={path!r}"
    saved = ckpt.get("model_config") or {}
    wanted = {"family": options.family, **arch_options(options)}
    wrong = [f"teacher.{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in wanted.items() if k in saved and saved[k] != v]
    if wrong:
        raise ConfigError(f"{key} was written for another model: " + "; ".join(wrong))
    if ckpt.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"{key} has {ckpt['num_classes']} classes, the data {num_classes}")
    if ckpt.get("finished") is False:
        raise ConfigError(f"{key} is from an unfinished run (iteration {ckpt.get('iteration')} of "
                          f"{ckpt.get('total_iters')}); finish it first")


def load_teacher(options: Any, num_classes: int) -> nn.Module:
    """The teacher of a distillation run, with its trained weights (``checkpoint`` or ``weights``)."""
    if not options.checkpoint:
        return build_model(options, num_classes, "teacher")
    ckpt = read_checkpoint(options.checkpoint, "teacher.checkpoint")
    _check_teacher_checkpoint(ckpt, options, num_classes, options.checkpoint)
    model = build_model(without_pretrained(options), num_classes, "teacher")  # every weight comes from the checkpoint
    source = repr(options.checkpoint)
    fit_state_dict(model, evaluated_state(ckpt, "teacher.checkpoint", source), "teacher.checkpoint", source)
    return model


def model_record(family: str, options: Any, num_classes: int, label_to_category: Mapping[int, int]) -> dict[str, Any]:
    """What a checkpoint says about the model it holds: its family, options, classes and their COCO ids."""
    return {
        "family": family,
        "model_config": dataclasses.asdict(options),
        "num_classes": int(num_classes),
        "label_to_category": {int(k): int(v) for k, v in label_to_category.items()},
    }


def check_labels(ckpt: Mapping[str, Any], dataset: Any, key: str) -> None:
    """The checkpoint's classes are the dataset's (the same category id behind every label)."""
    saved = {int(k): int(v) for k, v in (ckpt.get("label_to_category") or {}).items()}
    if saved and saved != {int(k): int(v) for k, v in dataset.label_to_category.items()}:
        raise ConfigError(f"{key} predicts {len(saved)} classes (category ids {sorted(saved.values())[:5]}...), "
                          f"the data has {dataset.num_classes} ({sorted(dataset.label_to_category.values())[:5]}...)")
