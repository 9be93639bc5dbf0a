"""Learning-rate schedules: linear warm-up, then cosine, constant or linear decay.

Shapes are defined over the fraction of the run, so a run with another batch (another step count)
keeps the same curve in tokens. The same function serves traced steps (inside the optimiser) and
host-side logging.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mdiff.optim.sde import OptimPlan


def lr_factor(step, *, steps, warmup_steps, kind: str, final_fraction: float, xp=jnp):
    """Multiplier of the peak lr at optimiser step `step` (0-based), for numpy (`xp=np`) or JAX. `steps` and
    `warmup_steps` may be traced (the train step takes them as data, mdiff.optim.adamw)."""
    step = xp.asarray(step, dtype=xp.float32)
    steps, warmup = xp.asarray(steps, dtype=xp.float32), xp.asarray(warmup_steps, dtype=xp.float32)
    warm = xp.minimum(1.0, (step + 1.0) / xp.maximum(warmup, 1.0))  # used only where step < warmup
    progress = xp.clip((step - warmup) / xp.maximum(steps - warmup - 1.0, 1.0), 0.0, 1.0)
    if kind == "cosine":
        decay = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + xp.cos(np.pi * progress))
    elif kind == "linear":
        decay = 1.0 - (1.0 - final_fraction) * progress
    elif kind == "constant":
        decay = xp.ones_like(progress)
    else:
        raise ValueError(f"config.optim.schedule={kind!r}: allowed: cosine, constant, linear")
    return xp.where(step < warmup, warm, decay)


def host_lr(plan: OptimPlan, kind: str, final_fraction: float, step: int) -> float:
    """The peak-class learning rate at `step`, computed on the host for logging."""
    f = lr_factor(step, steps=plan.steps, warmup_steps=plan.warmup_steps, kind=kind, final_fraction=final_fraction, xp=np)
    return float(plan.lr * f)
