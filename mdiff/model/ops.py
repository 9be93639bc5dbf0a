"""Fused elementwise pieces of the block with hand-written backward passes.

XLA:CPU materialises every intermediate that autodiff saves for the backward pass, and the MLP of a
small model is memory-bound on CPU: each extra pass over a [tokens, hidden] array costs about as
much as a fifth of the matmul it follows. These ops save only their input and recompute the rest in
one fused pass, forward and backward.
"""

from __future__ import annotations

import functools

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


# ---------------------------------------------------------------------------------------------
# The head's loss at target positions only, per modality
# ---------------------------------------------------------------------------------------------
# -log softmax(h @ W restricted to the position's modality range)[target] at the selected positions.
# The full head computes all V logits for every position and then masks most of them away; here
# the selected positions are sorted by modality and processed in tiles of one modality each, so a
# tile multiplies only its modality's columns (512 for image or audio instead of the whole
# vocabulary) and unselected positions (conditions, specials, unmasked targets) cost nothing. The
# tile loop has a data-dependent trip count, so the op carries its own backward (recomputing each
# tile's logits) and its own batching rule: under vmap with shared weights the batch is flattened
# into one tile list, so per-example vmaps (the train step's noise groups) do not each pay for
# their worst case.
HEAD_TILE = 128  # rows per tile: big enough for an efficient matmul, small padding waste per modality


def _tile_plan(modality: jax.Array, where: jax.Array, n_modalities: int, tile: int):
    """Rows grouped by modality into tiles of one modality: (tile modality [T], tile rows [T, tile],
    row valid [T, tile], number of tiles used). T = N / tile + n_modalities is the static maximum."""
    n = modality.shape[0]
    key = jnp.where(where, modality, n_modalities).astype(jnp.int32)
    order = jnp.argsort(key, stable=True)
    counts = jnp.stack([jnp.sum(key == m) for m in range(n_modalities)])
    starts = jnp.cumsum(counts) - counts  # first sorted row of each modality
    tiles = (counts + tile - 1) // tile
    tile_end = jnp.cumsum(tiles)
    max_tiles = -(-n // tile) + n_modalities
    j = jnp.arange(max_tiles)
    tile_mod = jnp.minimum(jnp.searchsorted(tile_end, j, side="right"), n_modalities - 1)
    local = j - (tile_end - tiles)[tile_mod]  # tile index within its modality
    offset = local[:, None] * tile + jnp.arange(tile)[None, :]  # [T, tile] row within the modality
    valid = (offset < counts[tile_mod][:, None]) & (j < tile_end[-1])[:, None]
    rows = order[jnp.clip(starts[tile_mod][:, None] + offset, 0, n - 1)]
    return tile_mod.astype(jnp.int32), rows, valid, tile_end[-1]


def _tile_logits(h_rows: jax.Array, w: jax.Array, lo: int, hi: int, excluded: int) -> jax.Array:
    logits = jnp.dot(h_rows, w[:, lo:hi])
    if lo <= excluded < hi:  # the MASK id is never a prediction
        logits = logits.at[:, excluded - lo].set(-jnp.inf)
    return logits


def _fwd_impl(h, w, modality, targets, where, *, ranges, excluded, tile):
    """(nll [N], logsumexp [N]) at the selected rows, 0 elsewhere."""
    tile_mod, rows, valid, used = _tile_plan(modality, where, len(ranges), tile)

    def branch(lo, hi):
        def run(i, carry):
            nll, lse_out = carry
            r, ok = rows[i], valid[i]
            logits = _tile_logits(h[r], w, lo, hi, excluded)
            lse = jax.nn.logsumexp(logits, axis=-1)
            picked = jnp.take_along_axis(logits, jnp.clip(targets[r] - lo, 0, hi - lo - 1)[:, None], axis=1)[:, 0]
            return nll.at[r].add(jnp.where(ok, lse - picked, 0.0)), lse_out.at[r].add(jnp.where(ok, lse, 0.0))

        return run

    branches = [branch(lo, hi) for lo, hi in ranges]
    zeros = jnp.zeros(h.shape[0], jnp.float32)
    return jax.lax.fori_loop(0, used, lambda i, c: jax.lax.switch(tile_mod[i], branches, i, c), (zeros, zeros))


def _bwd_impl(h, w, modality, targets, where, lse, g, *, ranges, excluded, tile):
    """(d h, d w) of sum(g * nll), recomputing each tile's logits."""
    tile_mod, rows, valid, used = _tile_plan(modality, where, len(ranges), tile)

    def branch(lo, hi):
        def run(i, carry):
            dh, dw = carry
            r, ok = rows[i], valid[i]
            h_rows = h[r]
            logits = _tile_logits(h_rows, w, lo, hi, excluded)
            probs = jnp.exp(logits - lse[r][:, None])
            onehot = jax.nn.one_hot(targets[r] - lo, hi - lo, dtype=probs.dtype)
            dlogits = jnp.where(ok, g[r], 0.0)[:, None] * (probs - onehot)
            return dh.at[r].add(jnp.dot(dlogits, w[:, lo:hi].T)), dw.at[:, lo:hi].add(jnp.dot(h_rows.T, dlogits))

        return run

    branches = [branch(lo, hi) for lo, hi in ranges]
    init = (jnp.zeros_like(h), jnp.zeros_like(w))
    return jax.lax.fori_loop(0, used, lambda i, c: jax.lax.switch(tile_mod[i], branches, i, c), init)


def _batched(impl, n_row_outs: int, n_shared_outs: int):
    """`impl` as a custom_vmap function. With shared weights (arg 1 unbatched) the batch is folded into
    the rows: one tile list for the whole batch. With per-example weights (packed sweep points) the
    examples run in turn, each with its own tile list."""
    op = jax.custom_batching.custom_vmap(impl)

    def rule(axis_size, in_batched, *arrays):
        def full(a, b):
            return a if b else jnp.broadcast_to(a, (axis_size, *a.shape))

        if not in_batched[1]:
            flat = [a if i == 1 else full(a, b).reshape(-1, *a.shape[1 + b:]) for i, (a, b) in enumerate(zip(arrays, in_batched))]
            outs = op(*flat)
            rows = [o.reshape(axis_size, -1, *o.shape[1:]) for o in outs[:n_row_outs]]
            return (*rows, *outs[n_row_outs:]), (True,) * n_row_outs + (False,) * n_shared_outs
        outs = jax.lax.map(lambda xs: op(*xs), tuple(full(a, b) for a, b in zip(arrays, in_batched)))
        return outs, (True,) * (n_row_outs + n_shared_outs)

    op.def_vmap(rule)
    return op


@functools.lru_cache(maxsize=None)
def _head_op(ranges: tuple[tuple[int, int], ...], excluded: int, tile: int):
    static = dict(ranges=ranges, excluded=excluded, tile=tile)
    fwd_impl = _batched(functools.partial(_fwd_impl, **static), 2, 0)
    bwd_impl = _batched(functools.partial(_bwd_impl, **static), 1, 1)

    @jax.custom_vjp
    def nll(h, w, modality, targets, where):
        return fwd_impl(h, w, modality, targets, where)[0]

    def fwd(h, w, modality, targets, where):
        out, lse = fwd_impl(h, w, modality, targets, where)
        return out, (h, w, modality, targets, where, lse)

    def bwd(res, g):
        h, w, modality, targets, where, lse = res
        dh, dw = bwd_impl(h, w, modality, targets, where, lse, g)
        return dh, dw, None, None, None

    nll.defvjp(fwd, bwd)
    return nll


def target_nll(
    h: jax.Array,
    w: jax.Array,
    modality: jax.Array,
    targets: jax.Array,
    where: jax.Array,
    *,
    ranges: tuple[tuple[int, int], ...],
    excluded: int,
    tile: int = HEAD_TILE,
) -> jax.Array:
    """-log softmax(h @ w[:, lo_m:hi_m])[target - lo_m] for rows with `where`, 0 elsewhere; [N] float32.

    h [N, D] float32, w [D, V] float32, modality/targets [N] int, where [N] bool; `ranges[m]` is the
    id range (lo, hi) rows of modality m may predict, never including `excluded` (the MASK id).
    """
    op = _head_op(tuple((int(lo), int(hi)) for lo, hi in ranges), int(excluded), int(tile))
    return op(h, w, modality.astype(jnp.int32), targets.astype(jnp.int32), where.astype(bool))
