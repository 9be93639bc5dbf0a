"""From a trained run directory (or a bare model) to what the samplers need: a logits function + params."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def model_logits_fn(graphdef: Any):
    """`logits_fn(state, tokens, batch)` for an NNX model split into (graphdef, state).

    The state travels as a jit argument, so the weights are not folded into the compiled sampler.
    """

    def logits_fn(state: Any, tokens: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        model = nnx.merge(graphdef, state)
        return model(tokens, batch["modality"], batch["segment_ids"], batch["positions"])

    return logits_fn
