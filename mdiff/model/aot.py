"""Ahead-of-time compilation of a sharded training step from abstract shapes (nothing is allocated).

Used to check that a size (e.g. the 3B preset) fits a mesh before any hardware is booked: the state
is built with `nnx.eval_shape`, sharded by the logical-axis rules, and the step is lowered and
compiled for the mesh; XLA's memory analysis then gives bytes per device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mdiff import parallel
from mdiff.data.layout import BATCH_KEYS
from mdiff.vocab import Modality, UnifiedVocab
from mdiff.diffusion.loss import mdm_loss
from mdiff.diffusion.schedules import get_schedule
from mdiff.model import build_model


def abstract_train_state(model_cfg: Any, vocab: UnifiedVocab, seq_len: int, mesh: Mesh, rules: parallel.Rules):
    """(graphdef, abstract params, abstract AdamW state, their shardings) without allocating anything."""
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, vocab, seq_len, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    param_shardings = parallel.state_shardings(params, mesh, rules)
    tx = optax.adamw(1e-4)
    opt_state = jax.eval_shape(tx.init, params)
    # AdamW moments mirror the parameter tree; scalars (counts) are replicated.
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, opt_state, param_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
    )
    return graphdef, params, rest, tx, opt_state, param_shardings, opt_shardings


def bare_train_step(graphdef: Any, rest: Any, tx: Any, vocab: UnifiedVocab) -> Callable:
    """`step(params, opt_state, batch, rng) -> (params, opt_state, loss)`: MDM loss (linear schedules),
    fwd + bwd + optimiser update, nothing else. What AOT checks compile and the step benchmark times."""
    schedules = {m: get_schedule("linear") for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)}

    def step(params, opt_state, batch, rng):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            logits_fn = lambda x, b: model(x, b["modality"], b["segment_ids"], b["positions"])  # noqa: E731
            return mdm_loss(logits_fn, batch, rng, vocab=vocab, schedules=schedules)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def compile_train_step(
    model_cfg: Any, vocab: UnifiedVocab, seq_len: int, batch_size: int, mesh: Mesh, rules: parallel.Rules
) -> tuple[Any, dict[str, int]]:
    """Lower and compile fwd + bwd + AdamW for the mesh; return (compiled, memory per device in bytes)."""
    parallel.check_divisible(batch_size, mesh, rules)
    graphdef, params, rest, tx, opt_state, p_sh, o_sh = abstract_train_state(model_cfg, vocab, seq_len, mesh, rules)
    step = bare_train_step(graphdef, rest, tx, vocab)
    b_sh = parallel.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=b_sh) for k in BATCH_KEYS}
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, PartitionSpec()))
    with parallel.use_mesh(mesh, rules):
        jitted = jax.jit(
            step,
            in_shardings=(p_sh, o_sh, b_sh, NamedSharding(mesh, PartitionSpec())),
            out_shardings=(p_sh, o_sh, NamedSharding(mesh, PartitionSpec())),
            donate_argnums=(0, 1),
        )
        compiled = jitted.lower(params, opt_state, batch, rng).compile()
    return compiled, memory_per_device(compiled)


def memory_per_device(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(stats, k, 0) or 0) for k in keys}
    out["peak_estimate_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out[
        "temp_size_in_bytes"] - out["alias_size_in_bytes"]
    return out
