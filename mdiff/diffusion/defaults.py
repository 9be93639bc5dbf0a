"""Defaults and checks for `config.diffusion`."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, ConfigError, fail, register_validator
from mdiff.vocab import MODALITIES


def diffusion_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # Schedule per modality, named by formula: linear, polynomial(p), cosine, sine, geometric(smin,smax).
            schedule={m: "linear" for m in MODALITIES},
            t_min=1e-3,  # t is clipped to [t_min, 1 - t_min] where the weight would blow up
            antithetic=True,  # low-discrepancy t across the batch
            # Pair each mask with its complement in the batch (needs one schedule for all modalities).
            anti_masking=False,
            cond_dropout=0.1,  # probability of dropping the condition (classifier-free guidance)
        )
    )


@register_validator("diffusion")
def validate_diffusion(config: ConfigDict) -> None:
    d = config.diffusion
    if not 0.0 <= d.t_min < 0.5:
        fail("diffusion.t_min", d.t_min, "must lie in [0, 0.5)")
    if not 0.0 <= d.cond_dropout < 1.0:
        fail("diffusion.cond_dropout", d.cond_dropout, "must lie in [0, 1)")
    from mdiff.diffusion.schedules import ScheduleError, modality_schedules  # noqa: PLC0415 (jax import)

    try:  # the rule (one known schedule per modality) lives where the schedules are built
        schedules = modality_schedules(d)
    except ScheduleError as err:
        raise ConfigError(str(err)) from None
    if d.anti_masking:
        from mdiff.diffusion.loss import check_anti_masking  # noqa: PLC0415 (jax import)

        try:
            check_anti_masking(schedules)
        except ValueError as err:
            fail("diffusion.anti_masking", True, str(err))
