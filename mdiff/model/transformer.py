"""Bidirectional tri-modal transformer (Flax NNX) for masked diffusion.

Pre-norm blocks with RMSNorm, QK-norm, RoPE over `positions`, SwiGLU or GELU MLP and full
(non-causal) attention that never crosses `segment_ids`. There is no time input: the denoiser reads
the noise level from the MASK tokens. Inputs are token ids over the unified vocabulary plus a learned
modality embedding; the head can restrict each position's logits to its modality's id range.

Every parameter carries `logical_axes` metadata (names from mdiff.parallel.defaults.LOGICAL_AXES);
mdiff.parallel maps them to mesh axes. Blocks are written as pure functions of a parameter dict so
that the same code runs layer by layer or under `lax.scan` over stacked layers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mdiff.vocab import NUM_MODALITIES, UnifiedVocab
from mdiff.model.ops import swiglu, target_nll
from mdiff.model.scaling import ModelShape, padded_vocab
from mdiff.parallel import constrain
from mdiff.parallel.defaults import LOGICAL_AXES

ACT = ("batch", "sequence", None)  # activations: split over the batch axes, replicated elsewhere

NEG_INF = -1e9  # logit of ids outside a position's modality range (finite: no inf - inf NaNs)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Everything about the network that is not its size."""

    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    qk_norm: bool = True
    rope_theta: float = 10000.0
    restrict_logits: bool = True
    attention: str = "explicit"  # explicit (matmuls + softmax) | fused (jax.nn.dot_product_attention)
    head: str = "targets"  # training loss: targets (only the target logits, per modality) | full (all logits)
    branch_scale: float = 1.0  # residual-branch multiplier (CompleteP depth scaling sets it)
    head_init_scale: float = 1.0  # factor on the head's 1/sqrt(width) init std (CompleteP: 1/sqrt(m_N))
    norm_eps: float = 1e-6


def param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], axes: tuple, dtype: Any) -> nnx.Param:
    if len(axes) != len(shape) or any(a is not None and a not in LOGICAL_AXES for a in axes):
        raise ValueError(f"logical axes {axes} do not fit shape {shape} (known axes: {LOGICAL_AXES})")
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=tuple(axes))


def _dense_init(fan_in: int, scale: float = 1.0) -> Callable:
    return nnx.initializers.normal(stddev=scale / np.sqrt(fan_in))


def block_param_specs(shape: ModelShape) -> dict[str, tuple[tuple[int, ...], tuple, Callable]]:
    """Name -> (shape, logical axes, initializer) of one block's parameters."""
    d, h, hd, f = shape.width, shape.heads, shape.head_dim, shape.mlp_hidden
    ones = nnx.initializers.ones
    specs = {
        "attn_norm": ((d,), ("embed",), ones),
        "qkv": ((d, 3, h, hd), ("embed", None, "heads", "kv"), _dense_init(d)),
        "q_norm": ((hd,), ("kv",), ones),
        "k_norm": ((hd,), ("kv",), ones),
        "out": ((h, hd, d), ("heads", "kv", "embed"), _dense_init(d)),
        "mlp_norm": ((d,), ("embed",), ones),
        "mlp_down": ((f, d), ("mlp", "embed"), _dense_init(f)),
    }
    n_in = 2 if shape.mlp_type == "swiglu" else 1
    specs["mlp_in"] = ((d, n_in, f), ("embed", None, "mlp"), _dense_init(d))
    return specs


class Blocks(nnx.Module):
    """All transformer blocks: a list of per-layer parameter dicts, or one stacked dict for scan."""

    def __init__(self, shape: ModelShape, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.shape, self.opts = shape, opts
        specs = block_param_specs(shape)
        if opts.scan_layers:
            self.stacked = nnx.Dict(
                {
                    name: nnx.Param(
                        jnp.stack([init(rngs.params(), s, opts.param_dtype) for _ in range(shape.depth)]),
                        logical_axes=("layers", *axes),
                    )
                    for name, (s, axes, init) in specs.items()
                }
            )
        else:
            self.layers = nnx.List(
                [
                    nnx.Dict({name: param(rngs, init, s, axes, opts.param_dtype) for name, (s, axes, init) in specs.items()})
                    for _ in range(shape.depth)
                ]
            )

    def __call__(self, x: jax.Array, ctx: "AttentionContext") -> jax.Array:
        step = functools.partial(block_forward, shape=self.shape, opts=self.opts, ctx=ctx)
        if self.opts.remat:
            step = jax.checkpoint(step)
        if self.opts.scan_layers:
            params = {k: v[...] for k, v in self.stacked.items()}
            x, _ = jax.lax.scan(lambda h, p: (step(p, h), None), x, params)
            return x
        for layer in self.layers:
            x = step({k: v[...] for k, v in layer.items()}, x)
        return x


@dataclasses.dataclass(frozen=True)
class AttentionContext:
    """Per-batch tensors every block shares: the segment mask and the RoPE rotation."""

    mask: jax.Array  # [B, 1, L, L] bool
    cos: jax.Array  # [B, 1, L, hd/2]
    sin: jax.Array
    implementation: str | None = None  # fused attention's jax.nn.dot_product_attention implementation


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    half = head_dim // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None, :, None] * freqs  # [B, 1, L, half]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on [B, H, L, hd]."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def block_forward(
    p: dict[str, jax.Array], x: jax.Array, *, shape: ModelShape, opts: ModelOptions, ctx: AttentionContext
) -> jax.Array:
    """One pre-norm block on x [B, L, D].

    Projections contract the flattened tokens [B*L, D]: on XLA:CPU this avoids transposes of the
    activations in the backward pass, which otherwise dominate the step time. Weights keep their
    own dims (no reshape) so that their head/MLP sharding survives under GSPMD.
    """
    dt = opts.dtype
    b, l, d = x.shape
    h = rms_norm(x, p["attn_norm"], opts.norm_eps).reshape(b * l, d)
    x = x + opts.branch_scale * attention(p, h, (b, l), shape=shape, opts=opts, ctx=ctx)
    h = rms_norm(x, p["mlp_norm"], opts.norm_eps).reshape(b * l, d)
    up = jnp.einsum("nd,dcf->ncf", h, p["mlp_in"].astype(dt))  # [N, 1 or 2, F]
    if shape.mlp_type == "swiglu":
        act = swiglu(up)
    else:
        act = jax.nn.gelu(up[:, 0])
    mlp = jnp.dot(act, p["mlp_down"].astype(dt)).reshape(b, l, d)
    return constrain(x + opts.branch_scale * mlp, ACT)


def attention(
    p: dict[str, jax.Array],
    h: jax.Array,
    bl: tuple[int, int],
    *,
    shape: ModelShape,
    opts: ModelOptions,
    ctx: AttentionContext,
) -> jax.Array:
    """Self-attention of h [B*L, D] -> [B, L, D]; scores and values as [B, H, L, hd] batched matmuls,
    or (opts.attention == "fused") one jax.nn.dot_product_attention call, which GPUs run as cuDNN's
    fused kernel without materialising the [B, H, L, L] scores."""
    dt = opts.dtype
    (b, l), d, heads, hd = bl, shape.width, shape.heads, shape.head_dim
    qkv = jnp.einsum("nd,dthk->nthk", h, p["qkv"].astype(dt)).reshape(b, l, 3, heads, hd)
    if opts.attention == "fused":
        return _fused_attention(p, qkv, bl, shape=shape, opts=opts, ctx=ctx)
    qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B, H, L, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    if opts.qk_norm:
        q = rms_norm(q, p["q_norm"], opts.norm_eps)
        k = rms_norm(k, p["k_norm"], opts.norm_eps)
    q = apply_rope(q, ctx.cos, ctx.sin)
    k = apply_rope(k, ctx.cos, ctx.sin)
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)).astype(jnp.float32) / np.sqrt(hd)
    scores = jnp.where(ctx.mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    o = jnp.matmul(probs, v)  # [B, H, L, hd]
    o = jnp.transpose(o, (0, 2, 1, 3)).reshape(b * l, heads, hd)
    return jnp.einsum("nhk,hkd->nd", o, p["out"].astype(dt)).reshape(b, l, d)


def _fused_attention(
    p: dict[str, jax.Array], qkv: jax.Array, bl: tuple[int, int], *, shape: ModelShape, opts: ModelOptions,
    ctx: AttentionContext
) -> jax.Array:
    """The same attention on [B, L, H, hd] layouts through jax.nn.dot_product_attention (segment mask)."""
    dt = opts.dtype
    (b, l), d, heads, hd = bl, shape.width, shape.heads, shape.head_dim
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, hd]
    if opts.qk_norm:
        q = rms_norm(q, p["q_norm"], opts.norm_eps)
        k = rms_norm(k, p["k_norm"], opts.norm_eps)
    cos, sin = jnp.swapaxes(ctx.cos, 1, 2), jnp.swapaxes(ctx.sin, 1, 2)  # [B, L, 1, hd/2]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = jax.nn.dot_product_attention(q, k, v, mask=ctx.mask, implementation=ctx.implementation)
    return jnp.einsum("nhk,hkd->nd", o.reshape(b * l, heads, hd), p["out"].astype(dt)).reshape(b, l, d)


def fused_attention_implementation(dtype: Any) -> str | None:
    """cuDNN's fused kernel on NVIDIA GPUs (it takes 16-bit inputs only); elsewhere JAX's own lowering."""
    return "cudnn" if jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16) else None


class Transformer(nnx.Module):
    """Denoiser: (tokens, modality, segment_ids, positions) [B, L] int32 -> logits [B, L, V] float32."""

    def __init__(self, shape: ModelShape, vocab: UnifiedVocab, max_len: int, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.shape, self.opts, self.max_len = shape, opts, int(max_len)
        self.vocab_size = vocab.size
        self.mask_id = vocab.mask_id
        vp, d = padded_vocab(vocab.size), shape.width
        pdt = opts.param_dtype
        self.embed = param(rngs, nnx.initializers.normal(1.0), (vp, d), ("vocab", "embed"), pdt)
        self.modality_embed = param(rngs, nnx.initializers.normal(1.0), (NUM_MODALITIES, d), (None, "embed"), pdt)
        self.blocks = Blocks(shape, opts, rngs=rngs)
        self.final_norm = param(rngs, nnx.initializers.ones, (d,), ("embed",), pdt)
        self.head = param(rngs, _dense_init(d, opts.head_init_scale), (d, vp), ("embed", "vocab"), pdt)
        # Allowed logit range per modality id; NONE (specials) may predict any real id but MASK.
        table = vocab.range_table().copy()
        table[0] = (0, vocab.size)
        self.range_table = tuple(tuple(int(v) for v in row) for row in table)  # static, not a parameter

    def __call__(
        self, tokens: jax.Array, modality: jax.Array, segment_ids: jax.Array, positions: jax.Array
    ) -> jax.Array:
        x = self.features(tokens, modality, segment_ids, positions)
        b, l, d = x.shape
        # The head runs in float32 whatever the compute dtype: its [B*L, V] output is float32 anyway,
        # and XLA:CPU upcasts bf16 matmuls to f32 regardless. The modality restriction rides along in
        # the same matmul: a one-hot of the modality times a constant bias table (0 allowed, NEG_INF
        # not) adds the mask, instead of a separate select pass over the [B, L, V] logits.
        features = jnp.concatenate(
            [x.reshape(b * l, d).astype(jnp.float32), jax.nn.one_hot(modality.reshape(-1), NUM_MODALITIES)], axis=-1
        )
        weights = jnp.concatenate([self.head[...].astype(jnp.float32), jnp.asarray(self.logit_bias_table())], axis=0)
        logits = jnp.dot(features, weights).reshape(b, l, -1)
        return logits[..., : self.vocab_size]

    def target_nll(
        self, tokens: jax.Array, modality: jax.Array, segment_ids: jax.Array, positions: jax.Array,
        targets: jax.Array, where: jax.Array,
    ) -> jax.Array:
        """-log p(targets) [B, L] float32 under the same distribution as `__call__`'s logits, computed only
        at `where` (0 elsewhere) and only over each position's modality range (mdiff.model.ops.target_nll)."""
        x = self.features(tokens, modality, segment_ids, positions)
        b, l, d = x.shape
        nll = target_nll(
            x.reshape(b * l, d).astype(jnp.float32),
            self.head[...].astype(jnp.float32),
            modality.reshape(-1),
            targets.reshape(-1),
            where.reshape(-1),
            ranges=self.prediction_ranges(),
            excluded=self.mask_id,
        )
        return nll.reshape(b, l)

    def prediction_ranges(self) -> tuple[tuple[int, int], ...]:
        """Per modality id, the id range [lo, hi) a position may predict (MASK excluded separately)."""
        if self.opts.restrict_logits:
            return self.range_table
        return tuple((0, self.vocab_size) for _ in self.range_table)

    def features(
        self, tokens: jax.Array, modality: jax.Array, segment_ids: jax.Array, positions: jax.Array
    ) -> jax.Array:
        """The final-normed hidden states [B, L, D] the head reads."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq_len]; got shape {tokens.shape}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's maximum {self.max_len}")
        dt = self.opts.dtype
        # Token table: gathered over its embed dim (FSDP), still split over vocab (masked gather +
        # all-reduce). The small modality table is replicated: a split one makes GSPMD reshard badly.
        table = constrain(self.embed[...], ("vocab", None))
        modality_table = constrain(self.modality_embed[...], (None, None))
        x = jnp.take(table, tokens, axis=0) + jnp.take(modality_table, modality, axis=0)
        x = constrain(x.astype(dt), ACT)
        # Materialise the RoPE tables once: otherwise XLA recomputes the trig inside every consumer
        # fusion, per head and per layer, forward and backward.
        cos, sin = jax.lax.optimization_barrier(rope_tables(positions, self.shape.head_dim, self.opts.rope_theta))
        mask = (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        impl = fused_attention_implementation(self.opts.dtype) if self.opts.attention == "fused" else None
        x = self.blocks(x, AttentionContext(mask, cos, sin, impl))
        return rms_norm(x, self.final_norm[...], self.opts.norm_eps)

    def logit_bias_table(self) -> np.ndarray:
        """[NUM_MODALITIES, padded V] float32: 0 for the ids a position of that modality may predict, NEG_INF else."""
        ids = np.arange(padded_vocab(self.vocab_size))
        table = np.full((NUM_MODALITIES, ids.size), NEG_INF, np.float32)
        for m, (lo, hi) in enumerate(self.prediction_ranges()):
            table[m, (ids >= lo) & (ids < hi) & (ids != self.mask_id)] = 0.0
        return table
