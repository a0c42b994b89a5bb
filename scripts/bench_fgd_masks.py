"""Time FGD's mask construction: the vectorized ``fgd_masks`` against the per-box loop.

The setting is one training batch of RetinaNet/FGD: 8 images of 1333×800 with
50 ground-truth boxes each, masks for the 5 FPN levels (strides 8..128). Both
functions must give identical masks; the script checks that, prints a table
(best of ``--repeats`` runs, milliseconds) and exits with status 1 when the
total speed-up is below ``--min-speedup``.

    python scripts/bench_fgd_masks.py [--repeats 20] [--threads 1] [--min-speedup 10]

By default torch runs on one intra-op thread: the loop cannot use more, so this
compares the algorithms core for core, and on a shared, busy machine
multi-threaded timings of small ops are dominated by waiting for descheduled
threads. ``--threads 0`` keeps torch's default.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfd.distill.fgd import fgd_masks, fgd_masks_reference  # noqa: E402

IMAGE_HW = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)
NUM_IMAGES = 8
NUM_BOXES = 50


def random_boxes(k: int, image_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """k boxes (x1, y1, x2, y2) of 2%–50% of the image side, clipped to the image (some touch its border)."""
    h, w = image_hw
    scale = torch.tensor([w, h], dtype=torch.float32)
    size = (0.02 + 0.48 * torch.rand(k, 2, generator=generator)) * scale
    corner = torch.rand(k, 2, generator=generator) * scale - 0.1 * size
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--min-speedup", type=float, default=10.0, help="exit 1 when the total speed-up is lower")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    boxes = [random_boxes(NUM_BOXES, IMAGE_HW, gen) for _ in range(NUM_IMAGES)]
    sizes = [IMAGE_HW] * NUM_IMAGES
    levels = [(math.ceil(IMAGE_HW[0] / s), math.ceil(IMAGE_HW[1] / s)) for s in STRIDES]

    for hw in levels:
        ref, vec = fgd_masks_reference(boxes, sizes, hw), fgd_masks(boxes, sizes, hw)
        if not (torch.equal(ref[0], vec[0]) and torch.equal(ref[1], vec[1])):
            print(f"MISMATCH at level {hw}: fgd_masks differs from fgd_masks_reference")
            return 2

    print(
        f"fgd_masks: {NUM_IMAGES} images x {NUM_BOXES} boxes, input {IMAGE_HW[1]}x{IMAGE_HW[0]}, "
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.repeats}"
    )
    print(f"{'level':<6} {'H x W':>9} {'loop ms':>9} {'vector ms':>10} {'speed-up':>9}")
    for stride, hw in zip(STRIDES, levels):
        t_ref = best_time(lambda hw=hw: fgd_masks_reference(boxes, sizes, hw), args.repeats)
        t_vec = best_time(lambda hw=hw: fgd_masks(boxes, sizes, hw), args.repeats)
        name = f"P{int(math.log2(stride))}"
        print(f"{name:<6} {hw[0]:>4}x{hw[1]:<4} {t_ref:>9.2f} {t_vec:>10.3f} {t_ref / t_vec:>8.1f}x")

    def all_levels(fn: Callable) -> Callable[[], None]:
        return lambda: [fn(boxes, sizes, hw) for hw in levels]

    t_ref = best_time(all_levels(fgd_masks_reference), args.repeats)
    t_vec = best_time(all_levels(fgd_masks), args.repeats)
    speedup = t_ref / t_vec
    print(f"{'all 5':<6} {'':>9} {t_ref:>9.2f} {t_vec:>10.3f} {speedup:>8.1f}x")
    if speedup < args.min_speedup:
        print(f"speed-up {speedup:.1f}x is below the required {args.min_speedup:g}x")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
