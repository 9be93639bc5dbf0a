"""Named model sizes, exact parameter counts and analytic training FLOPs.

A `ModelShape` fixes the architecture (width, depth, heads, MLP width and kind). Parameter counts are
exact for `mdiff.model.transformer.Transformer` (tests compare them with the real parameter tree).

Convention for scaling fits: *embedding* parameters are the vocabulary-sized matrices (token
embedding and output head, both over the padded vocabulary) plus the small modality embedding;
everything else (attention, MLP, norms) is *non-embedding*. This matches the pilot's "320M params,
240M of them embeddings", which only adds up if the head is counted with the embeddings.

FLOPs per token (training, forward + backward), the usual dense-transformer count: 6 * N_matmul + 12 * L * D * S,
where N_matmul = L * (4 D^2 + k D F) + D * V_padded counts every weight that multiplies each token
(k = 3 for SwiGLU, 2 for GELU; the head counts all V_padded logits, as model.head=full computes them;
model.head=targets computes fewer, so this is a convention, not a measurement) and 12 L D S counts
Q K^T and P V. Gathers (embeddings), norms, RoPE, softmax and the optimiser are not counted.

The one compute model every run records and every analysis reads (summary.json and results.csv):
`params_nonembedding` (N of the fits; `params` is the same number, kept for older readers),
`params_total`, `flops_per_token` (the count above, per token the model computes on) and
`flops` = tokens_processed x flops_per_token (C of the fits). Note that C is not 6 N D: the head and
attention are in F, N excludes the head, and with anti-masking D (`tokens`, distinct data) is half of
`tokens_processed`. A fit that needs C as a function of N uses F(N) fitted to the logged flops_per_token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mdiff.config import get
from mdiff.errors import InputError
from mdiff.vocab import NUM_MODALITIES

VOCAB_MULTIPLE = 128  # vocabulary rows are padded to this multiple (shardable over tensor axes)


class ShapeError(InputError):
    """An unknown preset or an inconsistent shape."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    mlp_type: str = "swiglu"
    reference_vocab: int = 0  # the vocabulary size the preset was sized for (reports only)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ShapeError(f"model width {self.width} is not divisible by heads {self.heads}")
        if self.mlp_type not in ("swiglu", "gelu"):
            raise ShapeError(f"mlp_type {self.mlp_type!r}: allowed swiglu, gelu")
        if (self.width // self.heads) % 2:
            raise ShapeError(f"head dim {self.width // self.heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_mats(self) -> int:
        return 3 if self.mlp_type == "swiglu" else 2


def _shape(width: int, depth: int, heads: int, mlp: int, vocab: int = 0) -> ModelShape:
    return ModelShape(width, depth, heads, mlp, "swiglu", vocab)


# From the CPU quickstart sweep (well under 1M params) to the paper's 3B.
PRESETS: dict[str, ModelShape] = {
    "cpu-4xs": _shape(12, 2, 1, 32, 1024),  # below the quickstart's sizes: the small side of its IsoFLOP optima
    "cpu-3xs": _shape(16, 2, 2, 48, 1024),
    "cpu-xxs": _shape(24, 2, 2, 64, 1024),
    "cpu-xs": _shape(32, 2, 2, 96, 1024),
    "cpu-s": _shape(48, 3, 3, 128, 1024),
    "cpu-m": _shape(64, 3, 4, 192, 1024),
    "cpu-l": _shape(96, 4, 4, 256, 1024),
    "bench-small": _shape(256, 4, 4, 1024, 4096),
    # Pilot: ~320M total, ~240M of it in the two vocabulary matrices (large unified vocab).
    "pilot-320m": _shape(1024, 6, 8, 2816, 117_248),
    "1b": _shape(2048, 16, 16, 5632, 65_536),
    "3b": _shape(2560, 32, 20, 6912, 100_352),
}


SHAPE_KEYS = ("width", "depth", "heads", "mlp_hidden")  # what a preset fixes


def expand_preset(model_cfg: Any, defaults: Any) -> None:
    """Write a `model.size` preset's shape into model_cfg's explicit fields (config.json records them).

    A field that differs from both its default and the preset was set on purpose and conflicts with the
    preset: a config error naming both (set the preset or the fields, not both).
    """
    from mdiff.config import ConfigError  # noqa: PLC0415

    size = get(model_cfg, "size", "")
    if not size:
        return
    if size not in PRESETS:
        raise ConfigError(f"config.model.size={size!r}: known presets: {', '.join(PRESETS)} (or '' for the explicit shape)")
    preset = PRESETS[size]
    for key in SHAPE_KEYS:
        value, want = model_cfg[key], getattr(preset, key)
        if value != want and value != defaults[key]:
            raise ConfigError(
                f"config.model.{key}={value!r} conflicts with config.model.size={size!r} (which has {key}={want}); "
                f"set the preset or the explicit shape, not both"
            )
    with model_cfg.unlocked():
        for key in SHAPE_KEYS:
            model_cfg[key] = getattr(preset, key)


def resolve_shape(model_cfg: Any) -> ModelShape:
    """The shape a `config.model` asks for: a named preset, or the explicit width/depth/heads/mlp."""
    size = get(model_cfg, "size", "")
    mlp_type = get(model_cfg, "mlp_type", "swiglu")
    if size:
        if size not in PRESETS:
            raise ShapeError(f"config.model.size={size!r}: known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[size], mlp_type=mlp_type)
    return ModelShape(
        int(get(model_cfg, "width")),
        int(get(model_cfg, "depth")),
        int(get(model_cfg, "heads")),
        int(get(model_cfg, "mlp_hidden")),
        mlp_type,
    )



def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def param_counts(shape: ModelShape, vocab_size: int) -> dict[str, int]:
    """Exact parameter counts: total, embedding, non_embedding."""
    d, hd, f = shape.width, shape.head_dim, shape.mlp_hidden
    v = padded_vocab(vocab_size)
    per_layer = (
        4 * d * d  # q, k, v, o projections
        + shape.mlp_mats * d * f
        + 2 * d  # two pre-norm scales
        + 2 * hd  # q-norm and k-norm scales
    )
    embedding = 2 * v * d + NUM_MODALITIES * d
    non_embedding = shape.depth * per_layer + d  # + final norm
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def matmul_params(shape: ModelShape, vocab_size: int) -> int:
    """Weights multiplied with every token: attention, MLP and the (padded) output head."""
    d = shape.width
    return shape.depth * (4 * d * d + shape.mlp_mats * d * shape.mlp_hidden) + d * padded_vocab(vocab_size)


def flops_per_token(shape: ModelShape, vocab_size: int, seq_len: int) -> float:
    """Analytic training FLOPs per token (forward + backward): 6 N_matmul + 12 L D S."""
    attention = 12 * shape.depth * shape.width * seq_len
    return float(6 * matmul_params(shape, vocab_size) + attention)


def describe(shape: ModelShape, vocab_size: int, seq_len: int) -> dict[str, Any]:
    """Everything a run summary wants to know about the size."""
    return {
        **dataclasses.asdict(shape),
        "vocab_size": vocab_size,
        "vocab_padded": padded_vocab(vocab_size),
        **{f"params_{k}": v for k, v in param_counts(shape, vocab_size).items()},
        "flops_per_token": flops_per_token(shape, vocab_size, seq_len),
    }
