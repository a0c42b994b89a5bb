"""Freed host memory kept for reuse: a CPU speed option (``trainer.cpu_malloc``).

glibc's ``malloc`` serves a request above its mmap threshold (128 KiB, growing to at most 32 MiB)
with a fresh ``mmap`` and returns it to the kernel on ``free``; memory freed at the top of the heap
is returned too once it passes the trim threshold. A training step on the CPU allocates and frees
the same large tensors every iteration (a 1333×800 P3 map of 256 channels is 34 MB, an im2col of
the sparse f_trans 190 MB), so each step faults in, page by zero-filled page, memory the previous
step gave back. ``reuse`` turns both off: every allocation comes from the heap, and freed memory
stays there for the next step. The process keeps its peak memory instead of returning it, as the
CUDA caching allocator does. ``default`` leaves glibc as it is. The setting is the process's, made
once at its start (glibc's adaptive threshold cannot be turned back on), so ``scripts/bench_dfd_loss.py``
and ``scripts/bench_step.py`` compare the two in separate runs (``malloc=default``); the figures are in
``docs/choices.md``. Elsewhere than glibc (macOS, musl) the option does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

CPU_MALLOC_MODES = ("reuse", "default")
# mallopt(3) parameters: no mmap'd chunks; the heap's top trimmed only above 2 GiB free.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
REUSE = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def set_cpu_malloc(mode: str, key: str = "trainer.cpu_malloc") -> bool:
    """Apply ``mode`` (:data:`CPU_MALLOC_MODES`) to this process's malloc; whether it is now ``reuse``'s.

    ``default`` changes nothing (and returns False): call it before any ``reuse`` in the process.
    """
    if mode not in CPU_MALLOC_MODES:
        raise ValueError(f"{key}={mode!r}: expected one of {', '.join(CPU_MALLOC_MODES)}")
    if mode == "default":
        return False
    libc = _glibc()
    if libc is None:
        log.info("%s=%s: not glibc, the C library's allocator is left as it is", key, mode)
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in REUSE.items())
