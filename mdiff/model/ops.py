"""Fused elementwise pieces of the block with hand-written backward passes.

XLA:CPU materialises every intermediate that autodiff saves for the backward pass, and the MLP of a
small model is memory-bound on CPU: each extra pass over a [tokens, hidden] array costs about as
much as a fifth of the matmul it follows. These ops save only their input and recompute the rest in
one fused pass, forward and backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def swiglu(up: jax.Array) -> jax.Array:
    """silu(gate) * linear for up [N, 2, F] (gate = up[:, 0], linear = up[:, 1]) -> [N, F]."""
    gate, linear = up[:, 0], up[:, 1]
    return (jax.nn.silu(gate.astype(jnp.float32)) * linear.astype(jnp.float32)).astype(up.dtype)


def _swiglu_fwd(up: jax.Array) -> tuple[jax.Array, jax.Array]:
    return swiglu(up), up


def _swiglu_bwd(up: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    gate, linear = up[:, 0].astype(jnp.float32), up[:, 1].astype(jnp.float32)
    g = grad.astype(jnp.float32)
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    d_gate = g * linear * sig * (1.0 + gate * (1.0 - sig))  # d silu(x)/dx = sig(x) (1 + x (1 - sig(x)))
    d_linear = g * silu
    return (jnp.stack([d_gate, d_linear], axis=1).astype(up.dtype),)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
