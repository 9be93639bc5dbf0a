"""Process-wide memory settings that keep XLA:CPU from page-faulting its own buffers every step.

XLA:CPU allocates the temporaries of a compiled step with malloc from its worker threads and frees
them when the step ends. glibc serves such large requests from per-thread arenas or fresh mmaps and
gives the pages back to the kernel on free, so the next step touches brand-new 4 KiB pages: on the
bench-small training step that is about 200,000 minor page faults (some 800 MB zeroed by the
kernel) per step, a quarter of the step time (measured in BENCHMARKS.md). Two settings fix it:

* `keep_freed_memory()`: one malloc arena, no mmap'd chunks, no trimming, so glibc hands the same
  pages back next step (mallopt, at run time). Alone it removes the faults of a bare step but not of
  the whole training loop, whose mix of threads and allocations still returns memory;
* `reexec_with_huge_pages()`: glibc's `glibc.malloc.hugetlb=1` tunable makes malloc'd memory
  transparent huge pages (2 MiB), so whatever is still faulted in costs 512x fewer faults. glibc
  reads tunables only at start-up, so the command re-executes itself once with GLIBC_TUNABLES set.

The `mdiff` command and the benchmarks apply both; `make test` sets the tunable for pytest. The price
is that the process keeps its peak heap until it exits, which a training or sampling process does
anyway. MDIFF_MALLOC_TUNING=0 leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter ids from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_applied: bool | None = None


def tuning_enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("MDIFF_MALLOC_TUNING", "1") != "0"


def keep_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed pages (see module docstring); True if it took effect.

    Call it early, before JAX's worker threads allocate (a thread keeps the arena it first used).
    A no-op returning False off Linux, without glibc, or with MDIFF_MALLOC_TUNING=0. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not tuning_enabled():
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied


def huge_pages_environ(environ: dict[str, str], thp_mode: str | None) -> dict[str, str] | None:
    """The environment to re-execute with so malloc uses huge pages, or None when there is nothing to do.

    `thp_mode` is the kernel's transparent_hugepage setting ("always [madvise] never"); glibc's
    tunable works through madvise, so a kernel set to never makes it pointless.
    """
    if environ.get("MDIFF_MALLOC_TUNING", "1") == "0" or thp_mode is None or "[never]" in thp_mode:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE in tunables.split(":"):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))}


def reexec_with_huge_pages() -> None:
    """Re-run this very command line with the huge-page tunable set; returns only if that is not needed.

    Call it first thing in a command's entry point, before any work (the process is replaced).
    """
    if not tuning_enabled() or not getattr(sys, "orig_argv", None):
        return
    try:
        with open(THP_MODE_FILE) as f:
            mode = f.read()
    except OSError:
        return
    environ = huge_pages_environ(dict(os.environ), mode)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


def tune_malloc() -> bool:
    """Both settings, for a script's entry point: re-execute with huge pages if needed, then mallopt.

    Returns keep_freed_memory()'s answer. Only for the top of a script run from the command line.
    """
    reexec_with_huge_pages()
    return keep_freed_memory()
