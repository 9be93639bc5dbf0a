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


def real_train_step(model: dict, vocab, seq: int, batch: int, devices: list | None = None):
    """The training step `mdiff train` runs, built from a config: `(compile, state, put)`.

    The config is the defaults (schedules, AdamW with clipping, micro-batches) with this model, sequence
    length and batch, at its own base point (kappa = 1). `compile()` lowers and compiles the step
    (state, batch) -> (state, summed metrics) on a mesh over `devices` (default: all); `state` is the
    initialised train state there; `put(host_batch)` places a batch as the step expects it. The loss of a
    step is metrics["nelbo_sum"] / metrics["count"].
    """
    import pathlib
    import tempfile

    import jax

    from mdiff.defaults import base_config
    from mdiff.train import aot, loop

    config = base_config()
    config.model.update(model)
    config.data.seq_len, config.train.batch, config.train.eval_batch = seq, batch, batch
    config.train.tokens = config.optim.tokens_base = 1000 * seq * batch
    config.optim.batch_base = batch
    run = loop.setup(config, pathlib.Path(tempfile.gettempdir()), vocab, devices)

    def compile_step():
        compiled, hyperparameters = aot.compile_train_step(run), loop.device_hyperparameters(run)

        def step(state, batch):
            return compiled(state, batch, hyperparameters)

        step.memory_analysis = compiled.memory_analysis
        return step

    return compile_step, loop.init_state(run), (lambda b: jax.device_put(b, run.batch_sharding))
