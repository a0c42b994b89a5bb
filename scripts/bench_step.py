#!/usr/bin/env python
"""Training-step time and peak memory of a student with each distillation method.

    python scripts/bench_step.py                                   # smoke sizes, CPU: none vs dfd vs mse
    python scripts/bench_step.py scale=full methods=none,dfd,mgd,fgd,pkd iters=20   # on a GPU: 1333x800, X101 -> R50, bf16

Random images of the configured input size (data.max_size × data.min_size) and random boxes (for
instance families, e.g. ``student=mask_rcnn_swin_t``, each box filled as its mask);
teacher and student with random weights (speed does not depend on them). Any other key=value
is a Hydra override of the training config (e.g. data.batch_size=2 trainer.amp=bf16).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dataclasses  # noqa: E402

import torch  # noqa: E402

from dfd.distill import FeatureDistillation  # noqa: E402
from dfd.engine.config import Config, compose_config, distill_levels, load_config, method_params  # noqa: E402
from dfd.engine.dist import DistInfo, resolve_device  # noqa: E402
from dfd.engine.distiller import Distiller, probe_channels  # noqa: E402
from dfd.engine.setup import amp_dtype  # noqa: E402
from dfd.models import build_model, get_family, without_pretrained  # noqa: E402
from dfd.models.two_stage import boxes_as_masks  # noqa: E402


def bench(cfg: Config, methods: list[str], iters: int, warmup: int) -> dict[str, float]:
    device = resolve_device(cfg.trainer.device, DistInfo())
    amp = amp_dtype(cfg.trainer.amp, device)
    num_classes = 80
    student = build_model(without_pretrained(cfg.student), num_classes, "student").to(device)
    teacher = losses = None
    if methods:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, methods=methods))
        teacher = build_model(without_pretrained(cfg.teacher), num_classes, "teacher").to(device)
        losses = FeatureDistillation(method_params(cfg), probe_channels(student, teacher, distill_levels(cfg), device))
    model = Distiller(student, teacher, losses).to(device).train()
    params = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    h, w = cfg.data.min_size, cfg.data.max_size
    images = [torch.rand(3, h, w, generator=g) for _ in range(cfg.data.batch_size)]
    targets = []
    for _ in images:
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(8, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, num_classes + 1, (8,), generator=g)})
    if "masks" in get_family(cfg.student.family).target_keys:  # instance families: each box filled as its mask
        for t in targets:
            t["masks"] = boxes_as_masks(t["boxes"], (h, w))
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = sum(model(model.prepare(images, targets, device)).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    out = {"median_s": times[len(times) // 2], "min_s": times[0]}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv: list[str]) -> int:
    own = {"methods": "none,dfd,mse", "iters": "10", "warmup": "3"}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = value
        else:
            overrides.append(arg)
    cfg = load_config(compose_config(overrides), require_teacher=False)
    dev = "cuda" if torch.cuda.is_available() and cfg.trainer.device != "cpu" else "cpu"
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; input {cfg.data.max_size}x{cfg.data.min_size}, batch {cfg.data.batch_size}; "
          f"teacher {cfg.teacher.family} {getattr(cfg.teacher, 'backbone', '')}, student {cfg.student.family} "
          f"{getattr(cfg.student, 'backbone', '')}; amp {cfg.trainer.amp}")
    print("| methods | step median (s) | step min (s) | peak GPU memory (GiB) |\n|---|---:|---:|---:|")
    for entry in own["methods"].split(","):
        methods = [] if entry == "none" else entry.split("+")
        r = bench(cfg, methods, int(own["iters"]), int(own["warmup"]))
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "—"
        print(f"| {entry} | {r['median_s']:.3f} | {r['min_s']:.3f} | {peak} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
