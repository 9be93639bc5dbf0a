"""The train and eval steps: pure functions of (state, global batch).

Noise is per example: example i of step s draws its masks from fold_in(fold_in(key, s), i) and its t
from one stratified draw over the whole physical batch. So the update does not depend on how the
batch is split into micro-batches, devices or hosts (only float summation order does). Gradients are
of the NELBO *sum*, accumulated over micro-batches and divided once by the target count, which is the
gradient of the physical batch's nats per token.

With anti-masking, examples are paired (rows 2g, 2g+1: the pair keeps row 2g and its complement).
The batch is laid out as [rows / (M G), M, G] (M micro-batches, G = 2 with anti-masking else 1), so
micro-batch m takes rows spread over every data-parallel shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mdiff.diffusion.loss import draw_times, mdm_loss
from mdiff.diffusion.schedules import modality_schedules

State = dict[str, Any]  # params (pure dict), opt_state, step (int32), rng (uint32 key data)


@dataclasses.dataclass(frozen=True)
class LossSetup:
    graphdef: Any
    abstract_params: Any  # nnx.State of abstract Params (merge template)
    vocab: Any
    schedules: Any
    t_min: float
    antithetic: bool
    anti_masking: bool
    cond_dropout: float

    @property
    def group(self) -> int:
        return 2 if self.anti_masking else 1


def loss_setup(config: Any, graphdef: Any, abstract_params: Any, vocab: Any, *, train: bool = True) -> LossSetup:
    d = config.diffusion
    return LossSetup(
        graphdef=graphdef,
        abstract_params=abstract_params,
        vocab=vocab,
        schedules=modality_schedules(d),
        t_min=float(d.t_min),
        antithetic=bool(d.antithetic),
        anti_masking=bool(d.anti_masking) and train,
        cond_dropout=float(d.cond_dropout) if train else 0.0,
    )


def merge_model(setup: LossSetup, params: dict) -> nnx.Module:
    state = jax.tree.map(lambda x: x, setup.abstract_params)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(setup.graphdef, state)


def times(setup: LossSetup, key: jax.Array, rows: int) -> jax.Array:
    """t per example [rows]: one stratified draw per pair (anti-masking) or per row."""
    return draw_times(key, rows, t_min=setup.t_min, antithetic=setup.antithetic, group=setup.group)


def summed_nelbo(setup: LossSetup, params: dict, rows: dict, t: jax.Array, index: jax.Array, key: jax.Array):
    """(NELBO sum, summed metrics) over `rows` [n, G, L]; `index` [n] is each group's global index."""
    model = merge_model(setup, params)

    def logits_fn(noisy, b):
        return model(noisy, b["modality"], b["segment_ids"], b["positions"])

    def nll_fn(noisy, b, masked):
        return model.target_nll(noisy, b["modality"], b["segment_ids"], b["positions"], b["tokens"], masked)

    def one(group_rows, group_t, group_index):
        _, metrics = mdm_loss(
            logits_fn,
            group_rows,
            jax.random.fold_in(key, group_index),
            vocab=setup.vocab,
            schedules=setup.schedules,
            t_min=setup.t_min,
            anti_masking=setup.anti_masking,
            cond_dropout=setup.cond_dropout,
            t=group_t,
            nll_fn=nll_fn if model.opts.head == "targets" else None,
        )
        return metrics

    metrics = jax.vmap(one)(rows, t, index)
    sums = {k: jnp.sum(v) for k, v in metrics.items()}
    return sums["nelbo_sum"], sums


def split_micro(x: jax.Array, micro: int, group: int) -> jax.Array:
    """[rows, ...] -> [M, rows / (M G), G, ...]: micro-batch m holds group j*M + m."""
    rows = x.shape[0]
    return x.reshape(rows // (micro * group), micro, group, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(setup: LossSetup, optimizer: Callable[[dict], optax.GradientTransformation], micro: int) -> Callable:
    """(state, batch, hyperparameters) -> (state, metrics). `optimizer(hyperparameters)` is the update rule
    (mdiff.optim.adamw.make_optimizer with its values as data: runs that differ only in them share the
    compiled step, and packed sweep points each bring their own)."""

    def train_step(state: State, batch: dict, hyperparameters: dict) -> tuple[State, dict]:
        rows = batch["tokens"].shape[0]
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        t_key, noise_key = jax.random.split(step_key)
        t = times(setup, t_key, rows)
        index = jnp.arange(rows // setup.group, dtype=jnp.int32)
        xs = (
            {k: split_micro(v, micro, setup.group) for k, v in batch.items()},
            split_micro(t, micro, setup.group),
            index.reshape(-1, micro).swapaxes(0, 1),
        )
        grad_fn = jax.value_and_grad(lambda p, b, tt, i: summed_nelbo(setup, p, b, tt, i, noise_key), has_aux=True)

        def body(carry, x):
            (_, sums), grads = grad_fn(state["params"], *x)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zero_sums = jax.eval_shape(lambda: grad_fn(state["params"], *jax.tree.map(lambda a: a[0], xs))[0][1])
        init = (
            jax.tree.map(jnp.zeros_like, state["params"]),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums),
        )
        (grads, sums), _ = jax.lax.scan(body, init, xs)
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["count"], 1.0), grads)
        updates, opt_state = optimizer(hyperparameters).update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
        return new_state, dict(sums, grad_norm=optax.global_norm(grads))

    return train_step


def make_eval_step(setup: LossSetup) -> Callable:
    """(params, batch, key) -> summed metrics, with fixed noise from `key` (the caller fixes it)."""

    def eval_step(params: dict, batch: dict, key: jax.Array) -> dict:
        rows = batch["tokens"].shape[0]
        t_key, noise_key = jax.random.split(key)
        t = times(setup, t_key, rows)
        grouped = {k: v.reshape(rows // setup.group, setup.group, *v.shape[1:]) for k, v in batch.items()}
        index = jnp.arange(rows // setup.group, dtype=jnp.int32)
        _, sums = summed_nelbo(setup, params, grouped, t.reshape(-1, setup.group), index, noise_key)
        return sums

    return eval_step
