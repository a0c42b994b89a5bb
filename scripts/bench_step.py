#!/usr/bin/env python
"""Training-step time and peak memory of a student with each distillation method.

    python scripts/bench_step.py                                   # smoke sizes, CPU: floor, dfd, mse
    python scripts/bench_step.py scale=full methods=dfd,mgd,fgd,pkd iters=20   # on a GPU: 1333x800, X101 -> R50, fp32
    python scripts/bench_step.py scale=full methods=dfd,dfd@dense,dfd@dense@compiled   # DFD's options, measured
    python scripts/bench_step.py trainer.cpu_malloc=default        # glibc's malloc as it comes (a process setting)
    python scripts/bench_step.py trainer.channels_last=true        # both models' weights channels-last

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
import statistics  # noqa: E402

import torch  # noqa: E402

from dfd.distill import FeatureDistillation  # noqa: E402
from dfd.engine.config import Config, compose_config, distill_levels, load_config, method_params  # noqa: E402
from dfd.engine.distiller import Distiller, probe_channels  # noqa: E402
from dfd.engine.setup import amp_dtype, memory_format, setup_process  # noqa: E402
from dfd.models import build_model, freeze, get_family, without_pretrained  # noqa: E402
from dfd.models.two_stage import boxes_as_masks  # noqa: E402


def synthetic_batch(cfg: Config, num_classes: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images of the configured size and 8 random boxes per image (masks for instance families)."""
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
    return images, targets


class Floor(torch.nn.Module):
    """The floor of a distillation step: the student's training step and the teacher's forward, no loss."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, levels: list[str]) -> None:
        super().__init__()
        self.student, self.teacher, self.levels = student, teacher, levels

    def train(self, mode: bool = True) -> "Floor":
        super().train(mode)
        self.teacher.eval()
        return self

    def prepare(self, *args):
        return self.student.prepare(*args)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.student]

    def forward(self, batch):
        out = self.student.train_step(batch)
        with torch.no_grad():
            self.teacher.distill_maps(batch, self.levels)
        return out.losses


FLAGS = ("dense", "compiled")  # entry suffixes: @dense (DFD's f_trans never sparse), @compiled (torch.compile the losses)


def _losses(cfg: Config, entry: str, student, teacher, device: torch.device, backend: str) -> FeatureDistillation:
    """The distillation module of an entry ``methods[@flag...]`` (methods joined by "+", flags among :data:`FLAGS`)."""
    methods, *flags = entry.split("@")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise SystemExit(f"bench_step.py: methods entry {entry!r}: unknown flag(s) {unknown}; flags: {', '.join(FLAGS)}")
    distill = dataclasses.replace(cfg.distill, methods=methods.split("+"))
    if "dense" in flags:
        distill = dataclasses.replace(distill, dfd=dataclasses.replace(distill.dfd, sparse_max_fraction=0.0))
    c = dataclasses.replace(cfg, distill=distill)
    losses = FeatureDistillation(method_params(c), probe_channels(student, teacher, distill_levels(c), device))
    return torch.compile(losses, backend=backend) if "compiled" in flags else losses


def variants(cfg: Config, entries: list[str], device: torch.device,
             backend: str = "inductor") -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """One model and optimizer per entry ("floor", "none" or methods joined by "+", with @flags), sharing one
    student and teacher (speed does not depend on the weights)."""
    num_classes = 80
    layout = memory_format(cfg)
    student = build_model(without_pretrained(cfg.student), num_classes, "student").to(device, memory_format=layout)
    teacher = freeze(build_model(without_pretrained(cfg.teacher), num_classes, "teacher").to(device, memory_format=layout))
    out = {}
    for entry in entries:
        if entry == "none":
            model = Distiller(student)
        elif entry == "floor":
            model = Floor(student, teacher, distill_levels(cfg))
        else:
            model = Distiller(student, teacher, _losses(cfg, entry, student, teacher, device, backend))
        model = model.to(device).train()
        params = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
        out[entry] = (model, torch.optim.SGD(params, lr=1e-4, momentum=0.9))
    return out


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, batch_args: tuple, device: torch.device, amp) -> float:
    """Seconds of one training step (forward, backward, optimizer step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        loss = sum(model(model.prepare(*batch_args, device)).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench(cfg: Config, entries: list[str], iters: int, warmup: int, device: torch.device,
          backend: str = "inductor") -> dict[str, dict[str, object]]:
    """Step times of every entry on ``device`` (set up by :func:`setup_process`), interleaved: each round runs every
    entry once, in an order rotated every round (compiled entries compile in the warm-up rounds)."""
    amp = amp_dtype(cfg.trainer.amp, device, get_family(cfg.student.family))
    models = variants(cfg, entries, device, backend)
    batch_args = synthetic_batch(cfg, 80)
    times: dict[str, list[float]] = {e: [] for e in entries}
    peak: dict[str, float] = {e: 0.0 for e in entries}
    for r in range(warmup + iters):
        for e in entries[r % len(entries):] + entries[:r % len(entries)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dt = step_time(*models[e], batch_args, device, amp)
            if r >= warmup:
                times[e].append(dt)
            if device.type == "cuda":
                peak[e] = max(peak[e], torch.cuda.max_memory_allocated(device) / 2**30)
    return {e: {"times": times[e], "peak_gib": peak[e] if device.type == "cuda" else None} for e in entries}


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def main(argv: list[str]) -> int:
    own = {"methods": "dfd,mse", "iters": "10", "warmup": "2", "compile_backend": "inductor"}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = value
        else:
            overrides.append(arg)
    cfg = load_config(compose_config(overrides), require_teacher=False)
    _, device = setup_process(cfg)  # as a run: trainer.device, .threads, .cpu_malloc, the seed
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    entries = ["floor"] + [e for e in own["methods"].split(",") if e and e != "floor"]
    print(f"device: {name}; torch {torch.__version__}; input {cfg.data.max_size}x{cfg.data.min_size}, batch {cfg.data.batch_size}; "
          f"teacher {cfg.teacher.family} {getattr(cfg.teacher, 'backbone', '')}, student {cfg.student.family} "
          f"{getattr(cfg.student, 'backbone', '')}; amp {cfg.trainer.amp}; cpu_malloc {cfg.trainer.cpu_malloc}; channels_last {cfg.trainer.channels_last}; {own['iters']} interleaved rounds after {own['warmup']}")
    print("floor: the student's step plus the teacher's forward, no loss; ratio: a step's time over the floor's in the "
          "same round; median [min–max] over the rounds")
    results = bench(cfg, entries, int(own["iters"]), int(own["warmup"]), device, own["compile_backend"])
    floor = results["floor"]["times"]
    print("| methods | step (s) | ratio to floor | peak GPU memory (GiB) |\n|---|---:|---:|---:|")
    for e in entries:
        r = results[e]
        ratios = [t / f for t, f in zip(r["times"], floor)]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
        print(f"| {e} | {_spread(r['times'], '{:.3f}')} | {_spread(ratios, '{:.3f}')} | {peak} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
