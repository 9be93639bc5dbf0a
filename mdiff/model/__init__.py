"""The denoiser network: `build_model`, size presets (`scaling`) and input checks."""

from __future__ import annotations

from typing import Any

from flax import nnx

from mdiff.config import get
from mdiff.vocab import MODALITIES, UnifiedVocab
from mdiff.model.scaling import resolve_shape
from mdiff.model.transformer import DTYPES, ModelOptions, Transformer


def model_options(model_cfg: Any, **overrides: Any) -> ModelOptions:
    """`ModelOptions` from `config.model` (dtype names -> dtypes)."""
    opts = ModelOptions(
        dtype=DTYPES[get(model_cfg, "dtype", "float32")],
        param_dtype=DTYPES[get(model_cfg, "param_dtype", "float32")],
        remat=bool(get(model_cfg, "remat", False)),
        scan_layers=bool(get(model_cfg, "scan_layers", False)),
        qk_norm=bool(get(model_cfg, "qk_norm", True)),
        rope_theta=float(get(model_cfg, "rope_theta", 10000.0)),
        restrict_logits=bool(get(model_cfg, "restrict_logits", True)),
        attention=resolve_attention(get(model_cfg, "attention", "auto")),
        head=str(get(model_cfg, "head", "targets")),
    )
    return ModelOptions(**{**opts.__dict__, **overrides})


def resolve_attention(choice: str) -> str:
    """`model.attention` -> explicit | fused; auto is fused on GPUs only (the backend JAX runs on)."""
    if choice == "auto":
        import jax

        return "fused" if jax.default_backend() == "gpu" else "explicit"
    return choice


def build_model(model_cfg: Any, vocab: UnifiedVocab, max_len: int, *, rngs: nnx.Rngs, **overrides: Any) -> Transformer:
    """The transformer `config.model` describes. `overrides` set ModelOptions fields (e.g. branch_scale)."""
    return Transformer(resolve_shape(model_cfg), vocab, max_len, model_options(model_cfg, **overrides), rngs=rngs)


def check_mask_id(vocab: UnifiedVocab) -> None:
    """The MASK id must not collide with any modality's ids (the loss and head rely on it)."""
    for name in MODALITIES:
        lo, hi = vocab.range(name)
        if lo <= vocab.mask_id < hi:
            raise ValueError(f"vocab mask id {vocab.mask_id} lies inside the {name} range [{lo}, {hi})")


__all__ = ["build_model", "check_mask_id", "model_options", "Transformer", "ModelOptions"]
