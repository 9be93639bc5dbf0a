"""Defaults and checks for `config.model`."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator


def model_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            size="",  # a named preset from mdiff.model.scaling; "" uses the explicit shape below
            width=256,
            depth=4,
            heads=4,
            mlp_hidden=1024,
            mlp_type="swiglu",  # swiglu | gelu
            dtype="float32",  # compute dtype: float32 | bfloat16
            param_dtype="float32",
            remat=False,
            scan_layers=False,
            qk_norm=True,
            rope_theta=10000.0,
            restrict_logits=True,  # logits only over the target modality's id range
        )
    )


@register_validator("model")
def validate_model(config: ConfigDict) -> None:
    m = config.model
    if m.mlp_type not in ("swiglu", "gelu"):
        fail("model.mlp_type", m.mlp_type, "allowed: swiglu, gelu")
    for key in ("dtype", "param_dtype"):
        if m[key] not in ("float32", "bfloat16"):
            fail(f"model.{key}", m[key], "allowed: float32, bfloat16")
    from mdiff.model.scaling import PRESETS  # pure Python, no JAX

    if m.size and m.size not in PRESETS:
        fail("model.size", m.size, f"known presets: {', '.join(PRESETS)} (or '' for the explicit shape)")
    if not m.size and m.width % m.heads:
        fail("model.width", m.width, f"must be divisible by model.heads={m.heads}")
