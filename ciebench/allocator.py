"""The process's memory allocator, tuned for large tensors on CPU (glibc's malloc only).

By default glibc maps every block above a dynamic threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free. In a scoring run (LPIPS's 33 MB maps and worker threads beside the CLIP forward)
large tensors kept landing on fresh pages, batch after batch: the extra time was system time (page
faults and zeroing), not computation. `reuse_freed_memory` serves blocks up to 256 MiB from malloc's
heap and keeps up to 1 GiB of freed memory for reuse. Measured (benchmarks/bench_metrics.py, 20
CIEBench samples, real-size CLIP ViT-L/14-336 and SqueezeNet, 2 CPU cores): `ciebench score`'s CLIP
forward took 51.7 s with glibc's defaults against a bare process's 45.9 s for the same forward; with
this setting 46.0 s against 45.9 s, and the whole run 57.4 s instead of 63.6 s. Values are unchanged
(only where memory comes from changes); the cost is resident memory that stays at its peak instead
of shrinking between batches.

The `ciebench` command, `ciebench.evaluate` and `ciebench.score` apply it to their process, and Ray
workers to theirs; code that builds a `RegionScorer` itself can call it. `CIEBENCH_ALLOCATOR=system`
leaves the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from .errors import UsageError

ENV = "CIEBENCH_ALLOCATOR"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
REUSE_BELOW = 256 * 2**20  # blocks up to this size come from the heap instead of fresh mappings
KEEP_FREED = 2**30  # freed memory kept for reuse before any is returned to the system


def reuse_freed_memory() -> bool:
    """Apply the settings above to this process; True when applied (glibc on Linux, and not opted
    out with CIEBENCH_ALLOCATOR=system)."""
    choice = os.environ.get(ENV, "tuned").strip().lower()
    if choice == "system":
        return False
    if choice != "tuned":
        raise UsageError(f"{ENV}={choice!r}: expected 'tuned' (the default) or 'system'")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, REUSE_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED))
