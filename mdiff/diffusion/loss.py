"""Continuous-time masked-diffusion negative ELBO with per-modality accounting.

For a clean sequence x0 and t ~ U(t_min, 1 - t_min) (one t per sequence), every target position i
(loss_mask > 0) of modality m is replaced by MASK with probability 1 - alpha_m(t). The per-sequence
NELBO estimate is

    (1 - 2 t_min) * sum over masked targets i of  w_m(t) * (-log p_theta(x0_i | x_t))
        + sum over targets i of  e_m * log V_m,       w = -alpha' / (1 - alpha),

an unbiased estimate of a complete bound for the diffusion run over [t_min, 1 - t_min]: the factor
(1 - 2 t_min) is the length of that interval, and e_m = Schedule.endpoint_mass(t_min) =
(1 - alpha_m(t_min)) + alpha_m(1 - t_min) carries the reconstruction and prior terms (a token masked
before the start or still visible at the end costs log V_m, V_m = the modality's vocabulary size).
Since (1 - 2 t_min) E_t[w (1 - alpha)] + e_m = 1 for every schedule, a uniform denoiser scores
exactly log V_m per token, also for schedules with alpha(0) < 1 such as geometric. Condition
tokens (cond_mask) are never masked; for classifier-free guidance a whole condition is replaced by
MASK with probability `cond_dropout` per example.

What counts as a target: a position with loss_mask > 0, which the data layout (mdiff.data.layout)
gives only to real content: text tokens (each document's or caption's end-of-document id included),
image codes, an audio clip's codes. Padding, specials, conditions and the fill after a caption or clip
(end/silence ids up to the slot length) have loss_mask = 0: never masked, never counted, so
`loss/<modality>` is nats per real token of that modality whatever the slot lengths. Only with the
`data.fill_targets` option is fill a target (loss_mask = 2); its share of each modality's targets is
then reported as `fill_share/<modality>`.

Anti-masking pairs each mask with its complement: rows come in adjacent pairs (2i, 2i + 1), row 2i is
kept in both places, and the second copy masks exactly the targets the first left visible. (The training pipeline
yields each row twice for this, so no packed row is dropped; see mdiff.data.pipeline.) The repeat's
positions are masked with probability alpha(t), so it is weighted by -alpha'/alpha
(Schedule.complement_weight). Why that is unbiased, and when it is not: in terms of the masking rate
r = 1 - alpha(s) the bound is the integral of (dr / r) E_{z ~ q_r}[sum over masked i of nll_i], where
q_r masks every target with probability r. The repeat is a state of q_r with r = alpha(t); the change
of variables r = alpha(t), dr = alpha'(t) dt turns that integral into E_t[-alpha'(t)/alpha(t) * ...],
so with ONE schedule the pair is two ELBO samples. With per-modality schedules the repeat masks text
with probability alpha_text(t) and images with alpha_image(t); a forward-process state needs one s
with 1 - alpha_m(s) = alpha_m(t) for every m at once, which does not exist unless the schedules
agree (or are all symmetric, alpha(1 - t) = 1 - alpha(t)). The repeat is then no sample of the
bound, and a denoiser whose text predictions depend on how much of the image is masked gets a biased
NELBO. `check_anti_masking` refuses that combination (the config validator calls it).

Metrics are sums (`nelbo_sum/<modality>`, `count/<modality>` = target tokens), so they add up across
micro-batches and hosts; `per_token_metrics` turns them into nats and bits per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mdiff.vocab import CONTENT_MODALITIES, FILL_TARGET, MODALITY_NAMES, Modality, UnifiedVocab
from mdiff.diffusion.schedules import Schedule

Batch = Mapping[str, jax.Array]
LogitsFn = Callable[[jax.Array, Batch], jax.Array]
NllFn = Callable[[jax.Array, Batch, jax.Array], jax.Array]  # (noisy, batch, masked) -> -log p(tokens) where masked


def sample_times(rng: jax.Array, batch_size: int, *, t_min: float, antithetic: bool) -> jax.Array:
    """t per sequence in [t_min, 1 - t_min]: stratified (u + i/B mod 1) when antithetic, else iid."""
    if antithetic:
        u = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)
    else:
        u = jax.random.uniform(rng, (batch_size,))
    return t_min + (1.0 - 2.0 * t_min) * u


def draw_times(rng: jax.Array, rows: int, *, t_min: float, antithetic: bool, group: int = 1) -> jax.Array:
    """t per row [rows], the one place times are drawn: one `sample_times` draw per group of `group`
    adjacent rows (anti-masking: a row and its complement share t, group 2)."""
    if rows % group:
        raise ValueError(f"{rows} rows do not split into groups of {group}")
    return jnp.repeat(sample_times(rng, rows // group, t_min=t_min, antithetic=antithetic), group)


def _per_modality(values: Callable[[Schedule], jax.Array], schedules: Mapping[Modality, Schedule], fill: float) -> jax.Array:
    """[B, 4] table (column = Modality id) of a per-schedule quantity; column NONE is `fill`."""
    cols = [values(schedules[m]) for m in CONTENT_MODALITIES]
    return jnp.stack([jnp.full_like(cols[0], fill), *cols], axis=-1)


def _per_position(table: jax.Array, modality: jax.Array) -> jax.Array:
    return jnp.take_along_axis(table, modality.astype(jnp.int32), axis=1)


def mask_probability(t: jax.Array, modality: jax.Array, schedules: Mapping[Modality, Schedule]) -> jax.Array:
    """[B, L] probability 1 - alpha_m(t) that each position is masked (0 for modality NONE)."""
    table = _per_modality(lambda s: 1.0 - s.alpha(t), schedules, 0.0)
    return _per_position(table, modality)


def corrupt(
    rng: jax.Array,
    batch: Batch,
    t: jax.Array,
    *,
    vocab: UnifiedVocab,
    schedules: Mapping[Modality, Schedule],
    uniforms: jax.Array | None = None,
    complement: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Forward process at times t [B]: (masked tokens [B, L], is_masked [B, L] bool).

    Only loss_mask positions can be masked. `uniforms` [B, L] replaces the random draw; rows where
    `complement` [B] is true mask exactly the targets that the same uniforms would leave visible.
    """
    tokens, modality = batch["tokens"], batch["modality"]
    if uniforms is None:
        uniforms = jax.random.uniform(rng, tokens.shape)
    masked = uniforms < mask_probability(t, modality, schedules)
    if complement is not None:
        masked = masked ^ complement[:, None]
    masked = masked & (batch["loss_mask"] > 0)
    return jnp.where(masked, vocab.mask_id, tokens), masked


def drop_condition(rng: jax.Array, tokens: jax.Array, cond_mask: jax.Array, p: float, mask_id: int) -> jax.Array:
    """Replace the whole condition of each example by MASK with probability p (classifier-free guidance)."""
    if p <= 0.0:
        return tokens
    drop = jax.random.bernoulli(rng, p, (tokens.shape[0], 1))
    return jnp.where(drop & (cond_mask > 0), mask_id, tokens)


def mdm_loss(
    logits_fn: LogitsFn,
    batch: Batch,
    rng: jax.Array,
    *,
    vocab: UnifiedVocab,
    schedules: Mapping[Modality, Schedule],
    t_min: float = 1e-3,
    antithetic: bool = True,
    anti_masking: bool = False,
    cond_dropout: float = 0.0,
    t: jax.Array | None = None,
    nll_fn: NllFn | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NELBO in nats per target token, and summable metrics (see module docstring).

    `t` [B] fixes the times (evaluation); otherwise they are drawn. logits_fn(tokens_masked, batch)
    returns float32 logits [B, L, V].
    """
    t_rng, mask_rng, drop_rng = jax.random.split(rng, 3)
    batch_size = batch["tokens"].shape[0]
    group = 2 if anti_masking else 1
    if anti_masking:
        check_anti_masking(schedules)
        if batch_size % 2:
            raise ValueError(f"anti-masking pairs rows: batch size {batch_size} must be even")
    if t is None:
        t = draw_times(t_rng, batch_size, t_min=t_min, antithetic=antithetic, group=group)
    if anti_masking:
        batch, t, uniforms, complement = _anti_masked(batch, t, mask_rng)
    else:
        uniforms, complement = jax.random.uniform(mask_rng, batch["tokens"].shape), None
    t = jnp.clip(t, t_min, 1.0 - t_min)
    noisy, masked = corrupt(
        mask_rng, batch, t, vocab=vocab, schedules=schedules, uniforms=uniforms, complement=complement
    )
    noisy = drop_condition(drop_rng, noisy, batch["cond_mask"], cond_dropout, vocab.mask_id)
    if nll_fn is not None:  # the model's own -log p(x0) at the masked positions (no full logits)
        nll = nll_fn(noisy, batch, masked)
    else:
        nll = token_nll(logits_fn(noisy, batch).astype(jnp.float32), batch["tokens"])
    weight = (1.0 - 2.0 * t_min) * _weights(t, batch["modality"], schedules, complement)
    per_position = jnp.where(masked, weight * nll, 0.0)
    endpoint = _endpoint_terms(batch["modality"], vocab, schedules, t_min)
    per_position = per_position + jnp.where(batch["loss_mask"] > 0, endpoint, 0.0)
    metrics = _sums(per_position, batch)
    loss = metrics["nelbo_sum"] / jnp.maximum(metrics["count"], 1.0)
    return loss, metrics


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target], [B, L].

    The target logit is picked with a one-hot product rather than a gather: its backward is a fused
    elementwise op instead of a scatter, which is much faster on CPU.
    """
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    target_logit = jnp.sum(logits * onehot, axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def _endpoint_terms(modality: jax.Array, vocab: UnifiedVocab, schedules: Mapping[Modality, Schedule], t_min: float) -> jax.Array:
    """[B, L] reconstruction + prior nats of each position: endpoint_mass_m(t_min) * log V_m (module docstring)."""
    table = [0.0] + [schedules[m].endpoint_mass(t_min) * math.log(_modality_size(vocab, m)) for m in CONTENT_MODALITIES]
    return jnp.asarray(table, jnp.float32)[modality.astype(jnp.int32)]


def _modality_size(vocab: UnifiedVocab, m: Modality) -> int:
    lo, hi = vocab.range(m)
    return hi - lo


def _weights(
    t: jax.Array, modality: jax.Array, schedules: Mapping[Modality, Schedule], complement: jax.Array | None
) -> jax.Array:
    w = _per_position(_per_modality(lambda s: s.weight(t), schedules, 0.0), modality)
    if complement is None:
        return w
    w_c = _per_position(_per_modality(lambda s: s.complement_weight(t), schedules, 0.0), modality)
    return jnp.where(complement[:, None], w_c, w)


def check_anti_masking(schedules: Mapping[Modality, Schedule]) -> None:
    """Anti-masking is an unbiased ELBO estimator only when every modality has the same schedule (module docstring)."""
    names = {MODALITY_NAMES[m]: schedules[m].name for m in CONTENT_MODALITIES}
    if len(set(names.values())) > 1:
        raise ValueError(
            f"anti-masking needs one schedule for every modality (its complement mask is a forward-process state "
            f"only then); got {names}: use one schedule or anti_masking=False"
        )


def _anti_masked(batch: Batch, t: jax.Array, rng: jax.Array):
    """Pair rows (2i, 2i + 1): both become row 2i at row 2i's time, the second with the complementary mask."""
    kept = {k: v[0::2] for k, v in batch.items()}
    doubled = {k: jnp.repeat(v, 2, axis=0) for k, v in kept.items()}
    u = jax.random.uniform(rng, kept["tokens"].shape)
    uniforms = jnp.repeat(u, 2, axis=0)  # the second copy inverts the same draw (see `corrupt`)
    complement = jnp.arange(batch["tokens"].shape[0]) % 2 == 1
    return doubled, jnp.repeat(t[0::2], 2), uniforms, complement


def _sums(per_position: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    targets = batch["loss_mask"] > 0
    modality = batch["modality"]
    metrics: dict[str, jax.Array] = {}
    for m in CONTENT_MODALITIES:
        name = MODALITY_NAMES[m]
        in_m = modality == m
        metrics[f"nelbo_sum/{name}"] = jnp.sum(jnp.where(in_m, per_position, 0.0))
        metrics[f"count/{name}"] = jnp.sum(targets & in_m).astype(jnp.float32)
        metrics[f"fill/{name}"] = jnp.sum((batch["loss_mask"] == FILL_TARGET) & in_m).astype(jnp.float32)
    metrics["nelbo_sum"] = jnp.sum(per_position)
    metrics["count"] = jnp.sum(targets).astype(jnp.float32)
    return metrics


def per_token_metrics(sums: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Summed metrics -> `loss` and `loss/<modality>` in nats per target token, `bits/...` in bits per
    token, and `fill_share/<modality>` (fill targets / targets) where fill counts as targets.

    A modality with no target tokens is left out.
    """
    out: dict[str, float] = {}
    total = float(sums["count"])
    if total > 0:
        out[f"{prefix}loss"] = float(sums["nelbo_sum"]) / total
        out[f"{prefix}bits"] = out[f"{prefix}loss"] / math.log(2.0)
    for name in MODALITY_NAMES.values():
        count = float(sums.get(f"count/{name}", 0.0))
        if count > 0:
            nats = float(sums[f"nelbo_sum/{name}"]) / count
            out[f"{prefix}loss/{name}"] = nats
            out[f"{prefix}bits/{name}"] = nats / math.log(2.0)
            fill = float(sums.get(f"fill/{name}", 0.0))
            if fill > 0:
                out[f"{prefix}fill_share/{name}"] = fill / count
    return out
