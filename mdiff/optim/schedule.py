"""Learning-rate schedules: linear warm-up, then cosine, constant or linear decay.

Shapes are defined over the fraction of the run, so a run with another batch (another step count)
keeps the same curve in tokens. The same function serves traced steps (inside the optimiser) and
host-side logging.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from mdiff.optim.sde import OptimPlan


def lr_factor(step, *, steps: int, warmup_steps: int, kind: str, final_fraction: float, xp=jnp):
    """Multiplier of the peak lr at optimiser step `step` (0-based), for numpy (`xp=np`) or JAX."""
    step = xp.asarray(step, dtype=xp.float32)
    warm = xp.minimum(1.0, (step + 1.0) / warmup_steps) if warmup_steps > 0 else xp.ones_like(step)
    progress = xp.clip((step - warmup_steps) / max(steps - warmup_steps - 1, 1), 0.0, 1.0)
    if kind == "cosine":
        decay = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + xp.cos(np.pi * progress))
    elif kind == "linear":
        decay = 1.0 - (1.0 - final_fraction) * progress
    elif kind == "constant":
        decay = xp.ones_like(progress)
    else:
        raise ValueError(f"config.optim.schedule={kind!r}: allowed: cosine, constant, linear")
    return xp.where(step < warmup_steps, warm, decay)


def make_schedule(plan: OptimPlan, kind: str, final_fraction: float, scale: float = 1.0) -> Callable:
    """optax-style schedule: step -> lr (peak `plan.lr * scale`)."""
    peak = plan.lr * scale

    def schedule(step):
        return peak * lr_factor(
            step, steps=plan.steps, warmup_steps=plan.warmup_steps, kind=kind, final_fraction=final_fraction
        )

    return schedule


def host_lr(plan: OptimPlan, kind: str, final_fraction: float, step: int) -> float:
    """The peak-class learning rate at `step`, computed on the host for logging."""
    f = lr_factor(step, steps=plan.steps, warmup_steps=plan.warmup_steps, kind=kind, final_fraction=final_fraction, xp=np)
    return float(plan.lr * f)
