"""Process-wide memory settings that keep XLA:CPU from page-faulting its own buffers every step.

XLA:CPU allocates the temporaries of a compiled step with malloc from its worker threads and frees
them when the step ends. glibc serves such large requests from per-thread arenas or fresh mmaps and
gives the pages back to the kernel on free, so the next step touches brand-new pages: on the
bench-small training step that is about 200,000 minor page faults (some 800 MB zeroed by the
kernel) per step, a quarter of the step time (measured in BENCHMARKS.md). One arena, no mmap'd
chunks and no trimming make glibc keep the freed memory and hand the same pages back next step.

The price is that the process keeps its peak heap until it exits, which is what a training or
sampling process does anyway. Set MDIFF_MALLOC_TUNING=0 to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter ids from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed pages (see module docstring); True if it took effect.

    Call it early, before JAX's worker threads allocate (a thread keeps the arena it first used).
    A no-op returning False off Linux, without glibc, or with MDIFF_MALLOC_TUNING=0. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("MDIFF_MALLOC_TUNING", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied
