"""What every benchmark measures the same way: the machine it ran on and the f32 matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mdiff.runtime import HUGE_PAGES_TUNABLE, tune_malloc  # noqa: E402

# As the mdiff CLI does: glibc keeps XLA:CPU's freed buffers (and backs them with huge pages) instead of
# page-faulting them back in every step. The re-exec restarts the benchmark script once, before any work.
MALLOC_TUNED = tune_malloc()


def machine() -> dict:
    """CPU model, core count, Python, and JAX's backend and first device when JAX is in use."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0],
            "malloc_tuned": MALLOC_TUNED, "malloc_huge_pages": HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")}
    if "jax" in sys.modules:
        import jax

        info.update(platform=jax.default_backend(), device=str(jax.devices()[0]), jax=jax.__version__)
    return info


def matmul_peak(n: int = 2048, calls: int = 20) -> float:
    """FLOP/s of a jitted f32 n x n matmul (median of `calls` after one warm-up): the peak we compare to."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)
