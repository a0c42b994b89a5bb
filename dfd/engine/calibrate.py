"""Distillation weights against the task loss at the start of training (``distill.start_ratio``).

The public weights of every method (FGD's α…λ, MGD's α, DFD's α and β) were set for one model pair on
COCO. On another teacher, student or data set the same weights can make the distillation terms 100×
the task loss or 1/100 of it. :func:`start_gains` gives each method one gain, so that at the start of
training its terms, summed, stand at a chosen ratio to the task loss; the ratios between a method's
own terms (HD against LD, FGD's four terms) stay as configured.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .dist import DistInfo
from .distiller import Distiller


@contextlib.contextmanager
def untouched(distiller: Distiller, device: torch.device) -> Any:
    """Run forward passes that leave no trace: the buffers (BatchNorm statistics) and the random state are
    restored afterwards, so a calibrated run trains as the uncalibrated one would, its gains aside."""
    saved = {name: buf.detach().clone() for name, buf in distiller.named_buffers()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, buf in distiller.named_buffers():
                    buf.copy_(saved[name])


@torch.no_grad()
def measure_terms(distiller: Distiller, loader: Iterable[tuple[Any, Any]], batches: int, device: torch.device,
                  amp_dtype: torch.dtype | None, info: DistInfo) -> tuple[float, dict[str, float]]:
    """The mean task loss and the mean of each ``<method>/<term>`` over the first ``batches`` batches of ``loader``
    (training mode, no update), averaged over the processes; the distiller and the random state are left as they
    were (:func:`untouched`; starting a loader draws its seed from the global generator)."""
    sums: dict[str, Tensor] = {}
    seen = 0
    with untouched(distiller, device):
        distiller.train()
        for images, targets in itertools.islice(loader, batches):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = distiller(distiller.prepare(images, targets, device))
            task = sum(v.float() for k, v in out.items() if not k.startswith("distill/"))
            for key, value in [("task", task), *((k.removeprefix("distill/"), v.float()) for k, v in out.items() if k.startswith("distill/"))]:
                sums[key] = sums[key] + value if key in sums else value
            seen += 1
    if not seen:
        raise ValueError("no batch to measure the distillation terms on: the training set is empty")
    keys = list(sums)
    means = torch.stack([sums[k] for k in keys]) / seen
    if info.enabled:
        torch.distributed.all_reduce(means)
        means /= info.world_size
    values = dict(zip(keys, means.tolist()))
    return values.pop("task"), values


def method_totals(terms: Mapping[str, float]) -> dict[str, float]:
    """``{"<method>/<term>": value}`` summed per method."""
    totals: dict[str, float] = {}
    for key, value in terms.items():
        method = key.split("/", 1)[0]
        totals[method] = totals.get(method, 0.0) + value
    return totals


def start_gains(task: float, terms: Mapping[str, float], ratio: float) -> dict[str, float]:
    """Each method's gain at the start of training:

        g_m = r · L_task / Σ_t L_{m,t}

    with L_task the task loss, L_{m,t} the terms of method m as configured (every level summed) and r
    ``distill.start_ratio``. Multiplying method m's terms by g_m puts their sum at r · L_task. A method whose
    terms are all zero at the start keeps gain 1 (there is nothing to scale)."""
    return {m: (ratio * task / total if total > 0 else 1.0) for m, total in method_totals(terms).items()}
