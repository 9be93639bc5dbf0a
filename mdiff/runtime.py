"""Process-wide settings: malloc tuning that keeps XLA:CPU from page-faulting its own buffers every step,
the persistent compilation cache, and the CPU shares of concurrent child processes.

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

Compilation cache (`use_compilation_cache()`, applied by the `mdiff` command and the packed trainer): XLA:CPU
takes 20 s or more to compile a small model's initialisation, train and eval steps, longer than a cpu-s
quickstart point trains, and every point of a sweep compiles the same programs (the seed is an argument of
the compiled initialisation, so seeds share it). JAX's persistent cache keeps compiled programs on disk:
MDIFF_COMPILATION_CACHE names its directory (default ~/.cache/mdiff/xla, or $XDG_CACHE_HOME/mdiff/xla;
0 turns it off; a JAX_COMPILATION_CACHE_DIR the user set wins). Entries are kept per host CPU feature set
and JAX version, in a subdirectory named by their hash, because an XLA:CPU program compiled for one CPU's
instructions (AVX-512, say) must not run on another that lacks them, as on a cluster's shared home.

CPU shares (`cpu_shares()`, used by the sweep runner): XLA:CPU sizes its thread pool by the CPUs a process
may run on, so two trainers started side by side on a 2-core machine each run two busy threads, four on two
cores. Dealing the CPUs out (job i of k gets every k-th CPU from the i-th, set as the child's affinity
before it starts) gives each its own: on 2 cores, 8 packed cpu-s points (warm cache) train 2.29x as fast as
the unpacked baseline as two one-core jobs of 4, against 2.09x as one job of 8 on both, and the quickstart's
unpacked sweep runs 1.10x faster (BENCHMARKS.md). MDIFF_CPU_SHARES=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import pathlib
import platform
import sys
from collections.abc import Mapping

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


CACHE_ENV = "MDIFF_COMPILATION_CACHE"
CPUINFO_FILE = "/proc/cpuinfo"


def host_fingerprint(cpuinfo: str, versions: str) -> str:
    """A short hash of what a compiled XLA:CPU program depends on besides its HLO: the machine type, the CPU's
    instruction-set flags (first processor's `flags`/`Features` line of /proc/cpuinfo) and the JAX versions."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.split(":", 1)[0].strip() in ("flags", "Features")), [])
    text = "\n".join([platform.machine(), " ".join(sorted(flags)), versions])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compilation_cache_dir(environ: dict[str, str]) -> pathlib.Path | None:
    """The base cache directory MDIFF_COMPILATION_CACHE asks for (None when it is 0)."""
    value = environ.get(CACHE_ENV, "")
    if value == "0":
        return None
    if value:
        return pathlib.Path(value)
    home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(home, "mdiff", "xla")


def use_compilation_cache() -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at this host's subdirectory of compilation_cache_dir();
    return the directory in use (None when off). Call before the first compilation; idempotent."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's JAX_COMPILATION_CACHE_DIR, or already set
        return pathlib.Path(jax.config.jax_compilation_cache_dir)
    base = compilation_cache_dir(dict(os.environ))
    if base is None:
        return None
    try:
        with open(CPUINFO_FILE) as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    import jaxlib

    path = base / host_fingerprint(cpuinfo, f"jax {jax.__version__} jaxlib {jaxlib.__version__}")
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


CPU_SHARES_ENV = "MDIFF_CPU_SHARES"


def cpu_shares(jobs: int, cpus: set[int] | None = None, environ: Mapping[str, str] | None = None
               ) -> list[frozenset[int]] | None:
    """`cpus` (default: the CPUs this process may run on) dealt over `jobs` concurrent child processes,
    share i holding every jobs-th CPU from the i-th; None when they are not split: one job, fewer CPUs
    than jobs, no affinity call on this platform, or MDIFF_CPU_SHARES=0 (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if jobs < 2 or environ.get(CPU_SHARES_ENV, "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    ordered = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(ordered) < jobs:
        return None
    return [frozenset(ordered[i::jobs]) for i in range(jobs)]


def confine(cpus: frozenset[int] | None) -> None:
    """Keep this process (a child, before it starts XLA) to `cpus`, one of cpu_shares(); None: no change."""
    if cpus:
        os.sched_setaffinity(0, cpus)
