"""trainer.cpu_malloc: freed host memory kept for the next step (dfd/engine/cpu_malloc.py)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from dfd.engine.cpu_malloc import set_cpu_malloc

# In a fresh process: the resident memory (MiB) a freed 256 MiB tensor leaves behind.
PROBE = """
import sys, torch
from dfd.engine.cpu_malloc import set_cpu_malloc
applied = set_cpu_malloc(sys.argv[1])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss()
x = torch.ones(64 * 2**20)
del x
print(applied, round(rss() - before))
"""


def _kept_after_free(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_reuse_keeps_freed_memory_and_default_returns_it() -> None:
    applied, kept = _kept_after_free("reuse")
    assert applied == "True" and kept > 200, kept  # the freed 256 MiB stays with the process for the next step
    applied, kept = _kept_after_free("default")
    assert applied == "False" and kept < 50, kept  # glibc's own behaviour: a large block goes back to the kernel


def test_an_unknown_setting_names_the_key() -> None:
    with pytest.raises(ValueError, match="trainer.cpu_malloc='tcmalloc'"):
        set_cpu_malloc("tcmalloc")
