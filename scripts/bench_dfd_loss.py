#!/usr/bin/env python
"""DFD's loss alone, forward + backward, at full-scale shapes: f_trans sparse against dense.

    python scripts/bench_dfd_loss.py                      # RetinaNet P3-P7 of 1333x800, 256 channels, batch 2
    python scripts/bench_dfd_loss.py repeats=10 threads=2 transform=conv3x3
    python scripts/bench_dfd_loss.py sweep=1               # P3 only: sparse/dense against the region's size
    python scripts/bench_dfd_loss.py malloc=default        # glibc's malloc as it comes (trainer.cpu_malloc)
    python scripts/bench_dfd_loss.py channels_last=1       # maps and f_trans channels-last (trainer.channels_last)
    python scripts/bench_dfd_loss.py compile=1             # also the dense loss compiled (trainer.compile_losses)
    python scripts/bench_dfd_loss.py bound=1               # also the sparse path's matrix products alone

Both variants are the same :class:`~dfd.distill.DFDLoss` with the same weights: "dense" with
``sparse_max_fraction=0`` (f_trans over the whole map, then masked), "sparse" with the given
``sparse_max_fraction`` (default: the library's). They run interleaved, in alternating order,
``repeats`` times after ``warmup`` rounds; each round gives one sparse/dense ratio, and the table
shows the median and the spread (min-max) of the times and of the ratios. The loss values are
compared (relative difference) so a speed-up can never come from computing something else.
``bound=1`` adds a row that runs only the matrix products of the sparse path (forward and both
backward products of each convolution, at the same shapes and in the same orientation, on inputs made
ahead: no gather, no scatter, no attention, no L_LD): what any im2col evaluation of the sparse
f_trans costs at least, as a ratio to dense in the same rounds.
``malloc`` sets how the process keeps freed memory (``trainer.cpu_malloc``, default ``reuse``, as training
does; a process setting, so the two are compared across runs).

The maps are random but spatially smooth (a low-resolution random field upsampled, plus noise),
as detector features are, so the high-disparity region is made of blobs, not of isolated pixels:
``scale`` is the size, in input pixels, over which they vary (default 64: a small object; 8
positions on P3, 1 on P6 and P7). How much sparse saves depends on it (small blobs grow more
when dilated for the 3x3 receptive field), so the table reports, per level,
the high-disparity share of the positions and the share of the dense convolution work the sparse
path does. ``sweep=1`` instead times f_trans's region error on P3 with blob masks of
growing size, to place the break-even that ``sparse_max_fraction``'s default comes from.
"""
from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfd.distill import DFDLoss, disparity_map, region_mask  # noqa: E402
from dfd.distill.constraint import masked_squared_error  # noqa: E402
from dfd.distill.sparse import conv_stack, required_masks, sparse_region_error, sparse_work_fraction  # noqa: E402
from dfd.distill.transform import build_transform  # noqa: E402
from dfd.engine.cpu_malloc import CPU_MALLOC_MODES, set_cpu_malloc  # noqa: E402

IMAGE_HW = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)


def smooth_field(n: int, c: int, hw: tuple[int, int], cell: int, g: torch.Generator) -> torch.Tensor:
    """Random field varying over about ``cell`` positions: bilinear upsampling of a coarse N(0, 1) grid."""
    h, w = hw
    coarse = torch.randn(n, c, max(2, math.ceil(h / cell)) + 1, max(2, math.ceil(w / cell)) + 1, generator=g)
    return F.interpolate(coarse, size=hw, mode="bilinear", align_corners=False)


def level_maps(n: int, c: int, hw: tuple[int, int], cell: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A student and a teacher map sharing structure (varying over ``cell`` positions), each with its own
    spatial gain (one smooth field for all channels: where a network responds more strongly) and noise."""
    base = smooth_field(n, c, hw, cell, g).relu()
    maps = [base * (1 + 0.5 * smooth_field(n, 1, hw, cell, g)).clamp(min=0) + 0.1 * torch.randn(n, c, *hw, generator=g)
            for _ in range(2)]
    return maps[0], maps[1]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, run in turn (order reversed every round) ``repeats`` times."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median [min–max]`` of ``values``."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def _losses(args: dict[str, str], c: int, levels: int, layout: torch.memory_format) -> dict[str, list[DFDLoss]]:
    """The variants timed, one DFDLoss per level each, all with the same weights: dense, sparse and, with
    ``compile=1``, dense compiled in place (``trainer.compile_losses``)."""
    kw = {"transform": args["transform"], "hd": args["hd"], "ld": args["ld"]}
    torch.manual_seed(0)  # f_trans's initial weights: the same loss values from run to run
    sparse_kw = {} if args["sparse_max_fraction"] == "default" else {"sparse_max_fraction": float(args["sparse_max_fraction"])}
    variants = {"dense": [DFDLoss(c, c, sparse_max_fraction=0.0, **kw) for _ in range(levels)],
                "sparse": [DFDLoss(c, c, **sparse_kw, **kw) for _ in range(levels)]}
    if args["compile"] == "1":
        variants["dense compiled"] = [DFDLoss(c, c, sparse_max_fraction=0.0, **kw) for _ in range(levels)]
    for name, losses in variants.items():
        for m, ref in zip(losses, variants["dense"]):
            m.load_state_dict(ref.state_dict())
            m.to(memory_format=layout)
            if name == "dense compiled":
                m.compile()
    return variants


def full_scale(args: dict[str, str]) -> int:
    n, c = int(args["batch"]), int(args["channels"])
    g = torch.Generator().manual_seed(0)
    shapes = [(math.ceil(IMAGE_HW[0] / s), math.ceil(IMAGE_HW[1] / s)) for s in STRIDES]
    layout = torch.channels_last if args["channels_last"] == "1" else torch.contiguous_format
    maps = [tuple(m.contiguous(memory_format=layout) for m in level_maps(n, c, hw, max(1.0, float(args["scale"]) / s), g))
            for hw, s in zip(shapes, STRIDES)]
    feats = [s.requires_grad_() for s, _ in maps]
    variants = _losses(args, c, len(shapes), layout)
    values: dict[str, float] = {}

    def step(losses: list[DFDLoss], name: str) -> Callable[[], None]:
        def run() -> None:
            for feat in feats:
                feat.grad = None
            for m in losses:
                m.zero_grad(set_to_none=True)
            total = sum(sum(m(fs, ft).values()) for m, fs, (_, ft) in zip(losses, feats, maps))
            total.backward()
            values[name] = float(total.detach())
        return run

    masks = [region_mask(disparity_map(fs.detach(), ft, m.temperature), m.threshold) for m, (fs, ft) in zip(variants["sparse"], maps)]
    fns = {name: step(losses, name) for name, losses in variants.items()}
    if args["bound"] == "1":
        fns["sparse, matrix products alone"] = _matmul_bound(variants["sparse"], feats, masks)
    times = interleaved(fns, int(args["repeats"]), int(args["warmup"]))
    print(f"DFD loss forward+backward, P3-P7 of {IMAGE_HW[1]}x{IMAGE_HW[0]}, batch {n}, {c} channels, "
          f"maps varying over {args['scale']} input pixels, "
          f"hd={args['hd']} ld={args['ld']} transform={args['transform']}; CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; malloc={args['malloc']}; channels_last={args['channels_last']}; {args['repeats']} interleaved rounds after {args['warmup']} warm-up")
    print("| level | H x W | R_HD share | sparse work share | path |\n|---|---|---:|---:|---|")
    for s, m, mask, hw in zip(STRIDES, variants["sparse"], masks, shapes):
        stack = conv_stack(m.transform) if m.transform is not None else None
        work = float(sparse_work_fraction(stack, required_masks(stack, mask))) if stack else float("nan")
        print(f"| P{int(math.log2(s))} | {hw[0]}x{hw[1]} | {float(m.hd_fraction):.3f} | {work:.3f} | {m.last_path} |")
    _report(times, values)
    return 0


def _dense_transform(f: torch.nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    f(x).sum().backward()


def _matmul_bound(losses: list[DFDLoss], feats: list[torch.Tensor], masks: list[torch.Tensor]) -> Callable[[], None]:
    """The sparse path's matrix products alone: for each level, each convolution of f_trans at the number
    of positions the sparse path evaluates it on, forward and backward (∂input, ∂W), on patch matrices
    made here (no gather, no scatter), in the library's orientation (the last one channel-major), into
    buffers made once (so this row does not change how the heap looks to the other variants). A level
    the sparse path would run dense runs f_trans densely, as it does."""
    products: list[Callable[[], None]] = []
    for m, fs, mask in zip(losses, feats, masks):
        plan = m.sparse_plan(mask)  # the loss's own decision
        if plan is None:
            products.append(functools.partial(_dense_transform, m.transform, fs.detach().clone().requires_grad_()))
            continue
        stack, sets = plan
        convs = [layer for layer in stack if isinstance(layer, torch.nn.Conv2d)]
        for i, (conv, s) in enumerate(zip(convs, sets)):
            w = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1).clone()
            p = torch.randn(int(s.sum()), w.shape[1])
            out = {"w": torch.empty_like(w), "p": torch.empty_like(p)}
            if i == len(convs) - 1:  # [C_out, K] = W · Pᵀ, as the library's last convolution
                g, out["y"] = torch.randn(w.shape[0], p.shape[0]), torch.empty(w.shape[0], p.shape[0])
                products.append(lambda w=w, p=p, g=g, o=out: (torch.mm(w, p.t(), out=o["y"]), torch.mm(g.t(), w, out=o["p"]),
                                                             torch.mm(g, p, out=o["w"])))
            else:  # [K, C_out] = P · Wᵀ
                g, out["y"] = torch.randn(p.shape[0], w.shape[0]), torch.empty(p.shape[0], w.shape[0])
                products.append(lambda w=w, p=p, g=g, o=out: (torch.mm(p, w.t(), out=o["y"]), torch.mm(g, w, out=o["p"]),
                                                             torch.mm(g.t(), p, out=o["w"])))

    def run() -> None:
        for m in losses:
            m.zero_grad(set_to_none=True)
        for product in products:
            product()
    return run


def _report(times: dict[str, list[float]], values: dict[str, float]) -> None:
    """Each variant's time, each one's ratio to dense in the same round, and the loss values."""
    print("\n| variant | time (s), median [min–max] |\n|---|---:|")
    for name, ts in times.items():
        print(f"| {name} | {spread(ts)} |")
    for name, ts in times.items():
        if name != "dense":
            print(f"| {name} / dense | {spread([t / d for t, d in zip(ts, times['dense'])])} |")
    rel = max(abs(v - values["dense"]) for v in values.values()) / max(abs(values["dense"]), 1e-30)
    print("loss: " + ", ".join(f"{name} {v:.6g}" for name, v in values.items()) + f" (largest relative difference {rel:.1e})")


def sweep(args: dict[str, str]) -> int:
    """Sparse/dense time of f_trans's region error on P3 against the sparse work share (blob masks)."""
    n, c = int(args["batch"]), int(args["channels"])
    hw = (math.ceil(IMAGE_HW[0] / 8), math.ceil(IMAGE_HW[1] / 8))
    g = torch.Generator().manual_seed(0)
    f = build_transform(args["transform"], c)
    stack = conv_stack(f)
    x = torch.randn(n, c, *hw, generator=g).requires_grad_()
    t = torch.randn(n, c, *hw, generator=g)
    field = smooth_field(n, 1, hw, 8, g)
    print(f"f_trans region error, forward+backward, P3 {hw[0]}x{hw[1]}, batch {n}, {c} channels, transform={args['transform']}; "
          f"CPU, {torch.get_num_threads()} threads; {args['repeats']} interleaved rounds")
    print("| region share | sparse work share | dense (s) | sparse (s) | sparse / dense |\n|---:|---:|---:|---:|---:|")
    for q in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        mask = (field >= torch.quantile(field.flatten(1), q, dim=1).reshape(n, 1, 1, 1)).float()
        sets = required_masks(stack, mask)
        work = float(sparse_work_fraction(stack, sets))

        def run(sparse: bool, mask: torch.Tensor = mask, sets: list = sets) -> Callable[[], None]:
            def go() -> None:
                x.grad = None
                f.zero_grad(set_to_none=True)
                loss = sparse_region_error(stack, t, x, mask, sets) if sparse else masked_squared_error(t, f(x), mask)
                loss.backward()
            return go

        times = interleaved({"dense": run(False), "sparse": run(True)}, int(args["repeats"]), int(args["warmup"]))
        ratios = [s / d for s, d in zip(times["sparse"], times["dense"])]
        print(f"| {float(mask.mean()):.2f} | {work:.2f} | {spread(times['dense'])} | {spread(times['sparse'])} | {spread(ratios, '{:.2f}')} |", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = {"repeats": "5", "warmup": "1", "threads": "1", "batch": "2", "channels": "256", "transform": "generation",
            "hd": "tf", "ld": "mse", "sparse_max_fraction": "default", "sweep": "0",
            "scale": "64", "malloc": "reuse", "channels_last": "0", "compile": "0", "bound": "0"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            raise SystemExit(f"unknown argument {arg!r}; expected key=value with key in {', '.join(args)}")
        args[key] = value
    if args["malloc"] not in CPU_MALLOC_MODES:
        raise SystemExit(f"malloc={args['malloc']!r}: expected one of {', '.join(CPU_MALLOC_MODES)}")
    set_cpu_malloc(args["malloc"], "malloc")
    if int(args["threads"]) > 0:
        torch.set_num_threads(int(args["threads"]))
    return sweep(args) if args["sweep"] == "1" else full_scale(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
