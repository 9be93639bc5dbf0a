"""Defaults and checks for `config.optim`.

The optimiser is AdamW. Its hyperparameters are given at a *base point* (batch `batch_base`, token
horizon `tokens_base`); `mdiff.optim.sde` maps them to this run's physical batch and horizon
(`config.train.batch`, `config.train.tokens`) with the SDE reparameterisation (formulas in mdiff.optim.sde).
"""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator

SCHEDULES = ("cosine", "constant", "linear")
WEIGHT_DECAY_SCALINGS = ("sqrt", "linear", "none")


def optim_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # Base point, tuned once at batch B_base and token horizon D_base.
            lr=3e-3,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.1,
            batch_base=32,  # sequences per step at the base point ...
            seq_len_base=128,  # ... of this many tokens: the base point is batch_base * seq_len_base tokens/step
            tokens_base=1_000_000,
            gamma=0.44,  # kappa = (D_base / D)^gamma * (B L) / (B_base L_base): batches in tokens per step
            reparameterise=True,  # SDE batch reparameterisation; False = naive (base values as they are)
            # sqrt: optax-style AdamW (decay multiplied by lr), wd * sqrt(kappa);
            # linear: decoupled (Loshchilov-Hutter) decay, not multiplied by the peak lr, wd * kappa;
            # none: decay as given, optax-style.
            weight_decay_scaling="sqrt",
            steps_critical=100,  # S_crit: warn when the run has fewer optimiser steps than this
            schedule="cosine",  # cosine | constant | linear (decay after warm-up)
            warmup=0.05,  # warm-up length as a fraction of the run (the cap when warmup_tokens is set)
            warmup_tokens=0,  # warm-up length in tokens (0: use the fraction alone)
            warmup_steps_max=1000,  # absolute cap on warm-up steps (0: no cap)
            final_lr_fraction=0.1,  # lr at the end of the decay, as a fraction of the peak
            clip=1.0,  # global gradient-norm clip (0: off)
            # CompleteP-style width/depth transfer (multipliers in mdiff.optim.completep).
            completep=False,
            width_base=256,  # m_N = model width / width_base
            depth_base=4,  # m_L = model depth / depth_base
            depth_alpha=1.0,  # residual branches scaled by m_L^-alpha, alpha in [0.5, 1]
        )
    )


@register_validator("optim")
def validate_optim(config: ConfigDict) -> None:
    o = config.optim
    if o.schedule not in SCHEDULES:
        fail("optim.schedule", o.schedule, "allowed: " + ", ".join(SCHEDULES))
    if o.weight_decay_scaling not in WEIGHT_DECAY_SCALINGS:
        fail("optim.weight_decay_scaling", o.weight_decay_scaling, "allowed: " + ", ".join(WEIGHT_DECAY_SCALINGS))
    if not 0.0 <= o.warmup < 1.0:
        fail("optim.warmup", o.warmup, "a fraction of the run in [0, 1)")
    for key in ("b1", "b2"):
        if not 0.0 <= o[key] < 1.0:
            fail(f"optim.{key}", o[key], "must lie in [0, 1)")
    for key in ("lr", "eps", "gamma", "batch_base", "seq_len_base", "tokens_base", "width_base", "depth_base"):
        if o[key] <= 0:
            fail(f"optim.{key}", o[key], "must be > 0")
    for key in ("weight_decay", "clip", "warmup_tokens", "warmup_steps_max", "steps_critical"):
        if o[key] < 0:
            fail(f"optim.{key}", o[key], "must be >= 0")
    if not 0.0 <= o.final_lr_fraction <= 1.0:
        fail("optim.final_lr_fraction", o.final_lr_fraction, "must lie in [0, 1]")
    if not 0.5 <= o.depth_alpha <= 1.0:
        fail("optim.depth_alpha", o.depth_alpha, "must lie in [0.5, 1] (CompleteP depth exponent)")
