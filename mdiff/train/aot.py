"""Ahead-of-time compilation of the training step from abstract shapes (nothing is allocated).

It compiles the step `mdiff train` runs (mdiff.train.step, set up from the config by
`mdiff.train.loop.setup`: the config's schedules, optimiser, clipping and micro-batches), so a size
(e.g. the 3B preset) can be checked against a mesh before any hardware is booked; XLA's memory
analysis then gives bytes per device.
"""

from __future__ import annotations

from typing import Any

from mdiff.train import loop, sharding


def compile_train_step(run: loop.Run) -> Any:
    """Lower and compile `run`'s train step for its shapes and mesh without running anything: call it as
    compiled(state, batch, loop.device_hyperparameters(run))."""
    with sharding.activation_mesh(run.mesh, run.config):
        return loop.jit_train_step(run).lower(run.abstract_state, loop.abstract_batch(run), loop.abstract_hyperparameters(run)).compile()


def memory_per_device(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled step, in bytes per device, plus a peak estimate."""
    stats = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(stats, k, 0) or 0) for k in keys}
    out["peak_estimate_bytes"] = (
        out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"] - out["alias_size_in_bytes"]
    )
    return out
