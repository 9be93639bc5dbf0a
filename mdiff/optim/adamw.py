"""AdamW with gradient clipping, the run's lr schedule and per-class (CompleteP) multipliers.

Hyperparameters come from `mdiff.optim.sde.plan` (already reparameterised for this batch and
horizon) and are fixed at build time, so the step function sees constants.
"""

from __future__ import annotations

from typing import Any

import optax

from mdiff.optim import completep
from mdiff.optim.schedule import make_schedule
from mdiff.optim.sde import OptimPlan


def _class_transform(plan: OptimPlan, optim: Any, mult: completep.Multipliers) -> optax.GradientTransformation:
    schedule = make_schedule(plan, optim.schedule, optim.final_lr_fraction, scale=mult.lr)
    decay = plan.weight_decay * mult.lambda_multiplier(plan.decoupled_decay)
    if plan.decoupled_decay and decay:
        # Loshchilov-Hutter: the decay follows the schedule's shape but not the peak lr, so divide it out.
        decay = decay / (plan.lr * mult.lr)
    parts = [optax.scale_by_adam(b1=plan.b1, b2=plan.b2, eps=plan.eps * mult.eps)]
    if decay:
        parts.append(optax.add_decayed_weights(decay))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def make_optimizer(
    optim: Any, plan: OptimPlan, params: Any, *, model_width: int, model_depth: int
) -> optax.GradientTransformation:
    """The full update rule for `params` (a pytree; only its structure, names and ranks are read)."""
    m_n, m_l = completep.width_depth_ratios(model_width, model_depth, optim)
    mults = completep.class_multipliers(m_n, m_l, optim.depth_alpha, optim.completep)
    labels = completep.label_tree(params)
    transforms = {name: _class_transform(plan, optim, mults[name]) for name in completep.CLASSES}
    body = optax.multi_transform(transforms, labels)
    return optax.chain(optax.clip_by_global_norm(optim.clip), body) if optim.clip > 0 else body
