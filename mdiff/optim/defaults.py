"""Defaults and checks for `config.optim`."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator


def optim_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # Base point, tuned once at batch B_base and token horizon D_base.
            lr=3e-3,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.1,
            batch_base=32,
            tokens_base=1_000_000,
            gamma=0.44,
            reparameterise=True,  # SDE batch reparameterisation; False = naive (base values as they are)
            weight_decay_scaling="sqrt",  # sqrt (lr-coupled AdamW) | linear (decoupled) | none
            schedule="cosine",  # cosine | constant | linear
            warmup=0.05,  # fraction of the run
            warmup_steps_max=1000,
            final_lr_fraction=0.1,
            clip=1.0,
        )
    )


@register_validator("optim")
def validate_optim(config: ConfigDict) -> None:
    o = config.optim
    if o.schedule not in ("cosine", "constant", "linear"):
        fail("optim.schedule", o.schedule, "allowed: cosine, constant, linear")
    if o.weight_decay_scaling not in ("sqrt", "linear", "none"):
        fail("optim.weight_decay_scaling", o.weight_decay_scaling, "allowed: sqrt, linear, none")
    if not 0.0 <= o.warmup < 1.0:
        fail("optim.warmup", o.warmup, "a fraction of the run in [0, 1)")
    for key in ("b1", "b2"):
        if not 0.0 <= o[key] < 1.0:
            fail(f"optim.{key}", o[key], "must lie in [0, 1)")
    if o.lr <= 0:
        fail("optim.lr", o.lr, "must be > 0")
