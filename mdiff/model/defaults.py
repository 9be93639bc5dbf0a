"""Defaults and checks for `config.model`."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_resolver, register_validator


ATTENTION_CHOICES = ("auto", "explicit", "fused")
HEAD_CHOICES = ("targets", "full")


def model_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # A named preset from mdiff.model.scaling; "" uses the explicit shape below. A preset is
            # expanded into width/depth/heads/mlp_hidden when the config is loaded (config.json shows them).
            size="",
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
            # Attention: explicit (matmuls + softmax over [B, H, L, L] scores), fused
            # (jax.nn.dot_product_attention: cuDNN's fused kernel on NVIDIA GPUs with 16-bit compute),
            # or auto (fused on GPUs, explicit on CPUs and TPUs, where JAX lowers both the same way).
            attention="auto",
            # Training loss head: targets (logits only at masked targets, over their modality's ids:
            # the same loss, less work) or full (all logits at every position, then the NLL).
            head="targets",
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
    if m.attention not in ATTENTION_CHOICES:
        fail("model.attention", m.attention, f"allowed: {', '.join(ATTENTION_CHOICES)}")
    if m.head not in HEAD_CHOICES:
        fail("model.head", m.head, f"allowed: {', '.join(HEAD_CHOICES)}")
    from mdiff.model.scaling import PRESETS  # pure Python, no JAX

    if m.size and m.size not in PRESETS:
        fail("model.size", m.size, f"known presets: {', '.join(PRESETS)} (or '' for the explicit shape)")
    if not m.size and m.width % m.heads:
        fail("model.width", m.width, f"must be divisible by model.heads={m.heads}")


@register_resolver("model")
def expand_model_preset(config: ConfigDict) -> None:
    from mdiff.model.scaling import expand_preset  # pure Python, no JAX

    expand_preset(config.model, model_defaults())
