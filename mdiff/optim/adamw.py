"""AdamW with gradient clipping, the run's lr schedule and per-class (CompleteP) multipliers.

Hyperparameters come from `mdiff.optim.sde.plan` (already reparameterised for this batch and horizon).
Their values enter the compiled step as data (`hyperparameters(plan)`, an argument of the train step),
not as constants: runs that differ only in lr, betas, eps, weight decay, warm-up or horizon compile one
program (shared through the persistent compilation cache), and packed sweep points each carry their
own. Only the update rule's structure is fixed at build time: the schedule's kind and final fraction,
clipping, the CompleteP multipliers (from the model's shape) and whether a class has weight decay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax

from mdiff.optim import completep
from mdiff.optim.schedule import lr_factor
from mdiff.optim.sde import OptimPlan

Hyperparameters = dict[str, Any]  # name -> float32 scalar (numpy on the host, traced in the step)
HYPERPARAMETERS = ("lr", "b1", "b2", "eps", "weight_decay", "steps", "warmup_steps")


def hyperparameters(plan: OptimPlan) -> Hyperparameters:
    """The plan's values the update rule reads, as float32 scalars (the train step's third argument)."""
    return {name: np.float32(getattr(plan, name)) for name in HYPERPARAMETERS}


def _class_transform(plan: OptimPlan, optim: Any, mult: completep.Multipliers, hp: Hyperparameters):
    peak = hp["lr"] * mult.lr

    def schedule(step):
        factor = lr_factor(step, steps=hp["steps"], warmup_steps=hp["warmup_steps"], kind=optim.schedule,
                           final_fraction=optim.final_lr_fraction)
        return peak * factor

    parts = [optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"] * mult.eps)]
    lam = mult.lambda_multiplier(plan.decoupled_decay)
    if plan.weight_decay and lam:  # structure, fixed per run: whether this class decays at all
        decay = hp["weight_decay"] * lam
        if plan.decoupled_decay:
            # Loshchilov-Hutter: the decay follows the schedule's shape but not the peak lr, so divide it out.
            decay = decay / peak
        parts.append(optax.add_decayed_weights(decay))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def make_optimizer(
    optim: Any, plan: OptimPlan, params: Any, *, model_width: int, model_depth: int, hp: Hyperparameters | None = None
) -> optax.GradientTransformation:
    """The full update rule for `params` (a pytree; only its structure, names and ranks are read), with
    the values `hp` (traced inside the train step; default: the plan's, for initialisation and shapes).
    `plan` fixes only the structure, so every `hp` gives the same optimiser-state tree."""
    hp = hyperparameters(plan) if hp is None else hp
    m_n, m_l = completep.width_depth_ratios(model_width, model_depth, optim)
    mults = completep.class_multipliers(m_n, m_l, optim.depth_alpha, optim.completep)
    labels = completep.label_tree(params)
    transforms = {name: _class_transform(plan, optim, mults[name], hp) for name in completep.CLASSES}
    body = optax.multi_transform(transforms, labels)
    return optax.chain(optax.clip_by_global_norm(optim.clip), body) if optim.clip > 0 else body
