"""Samplers for masked diffusion: ancestral and confidence-ordered decoding, one compiled loop each.

Everything here is written against a generic ``logits_fn(params, tokens, batch) -> logits [B, L, V]``
(f32), so the oracle tests need no model; `params` is passed as a jit argument (not closed over) so model
weights are never baked into the compiled program as constants.

The batch is the project's batch contract (mdiff/data/layout.py): targets are the positions with
``loss_mask == 1``; they start as MASK and are generated; every other position (task token, condition,
delimiters, padding) is frozen and never changes.

Ancestral sampling (``method="ancestral"``)
    On a time grid 1 = t_0 > t_1 > ... > t_T = 0, a masked target is unmasked in the step t -> s with the
    exact probability (alpha_s - alpha_t) / (1 - alpha_t) and its token drawn from p_theta(x0 | x_t);
    unmasked tokens are frozen. Because this probability depends only on time (our denoiser is not
    time-conditioned), the step at which each position is revealed is independent of the tokens, so we
    draw it up front from one uniform per position: position i is still masked at t_j iff
    u_i >= a_j, a_j = (alpha(t_j) - alpha(1)) / (1 - alpha(1)). The per-step survival probabilities
    multiply to exactly the chain of Bernoulli draws above (see `unmask_probability`), so this *is* the
    ancestral sampler, and it tells each step in advance which few positions need a categorical draw.
    Steps in which no position of the batch is revealed skip the forward pass (it would change nothing).

Confidence-ordered decoding (``method="confidence"``)
    The number revealed after step j is round(N * a_{j+1}) for N targets in the row (the same schedule
    as ancestral in expectation, but deterministic). Each step scores every masked target by the
    predicted distribution's max-probability, top-1/top-2 margin, or negative entropy
    (``ordering``), commits the k most confident and draws their tokens. Optional ``remask`` re-masks,
    at the start of a step, that fraction of already committed generated tokens with the lowest
    commit-time confidence (never the last step, never a condition token); they are generated again.

Cost per step
    Drawing a categorical over V at every position (as md4 does) costs more than the forward pass on a
    CPU (md4's sampler on the bench-small shape, measured here: 0.25 s of RNG vs 0.20 s forward). Here each step gathers only the
    positions it commits ([K, V] with K static: a bound on the batch's per-step count, flattened over
    rows for ancestral, per row for confidence; a rare over-full ancestral step falls back to all
    positions inside a `lax.cond`), slices the target modality's vocabulary
    range (logits outside it are never sampled), and applies guidance, temperature, top-k, top-p and the
    Gumbel-max draw to that slice only.

Precision
    Gumbel noise is drawn in float32 with JAX's ``mode="high"`` (two uniforms per value), so the largest
    Gumbel value is about 32 instead of about 16. Truncated (low-precision) Gumbel noise lowers the
    effective temperature of the categorical draw and measurably distorts masked-diffusion samples
    (Zheng et al., arXiv:2409.02908, who need float64 in PyTorch); logits are float32 throughout.

Classifier-free guidance
    With scale w, guided log-probs are (1 + w) log p(x | c) - w log p(x | no c), where "no c" replaces
    the condition's content (``cond_mask == 1``) by MASK, as the training-time condition dropout does.
    Both branches run as one forward pass over a batch of 2B rows. w = 0 is exactly the conditional
    sampler (tested); w = 0 skips the unconditional branch altogether.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdiff.config import ConfigError

LogitsFn = Callable[[Any, jax.Array, dict[str, jax.Array]], jax.Array]
AlphaFn = Callable[[Any], Any]

GRIDS = ("linear", "cosine")
METHODS = ("ancestral", "confidence")
ORDERINGS = ("max_prob", "margin", "entropy")


class SamplingError(ConfigError):
    """Sampler settings or inputs that cannot run (bad steps, top-p, task, guidance, prompt)."""


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static sampler settings (hashable: one compiled program per distinct value).

    steps: number of denoising steps T >= 1.  grid: "linear" (t_j = 1 - j/T) or "cosine"
    (t_j = cos(pi/2 * j/T), more steps early, near t = 1).  method: "ancestral" or "confidence".
    temperature: 0 means greedy (argmax).  top_k: 0 disables.  top_p: in (0, 1], 1 disables.
    guidance: classifier-free guidance scale w >= 0 (0 disables; conditional tasks only).
    ordering: confidence score for method="confidence": max_prob, margin or entropy.
    remask: fraction in [0, 1) of committed generated tokens re-masked per step (confidence only).
    """

    steps: int = 64
    grid: str = "linear"
    method: str = "ancestral"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 0.0
    ordering: str = "max_prob"
    remask: float = 0.0

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> "SamplerSettings":
        """Build from a `config.sampling.<task>` section (ConfigDict or dict), then apply overrides."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: section[k] for k in names if k in section}
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - names
        if unknown:
            raise SamplingError(f"unknown sampler settings {sorted(unknown)}; known: {sorted(names)}")
        return cls(**values)


def check_settings(settings: SamplerSettings, *, conditional: bool, where: str = "sampling") -> None:
    """Raise a one-line SamplingError naming the bad setting and what is allowed."""

    def bad(key: str, allowed: str) -> None:
        raise SamplingError(f"{where}.{key}={getattr(settings, key)!r}: {allowed}")

    if not isinstance(settings.steps, (int, np.integer)) or settings.steps < 1:
        bad("steps", "must be an integer >= 1")
    if settings.grid not in GRIDS:
        bad("grid", f"allowed: {', '.join(GRIDS)}")
    if settings.method not in METHODS:
        bad("method", f"allowed: {', '.join(METHODS)}")
    if not (settings.temperature >= 0 and math.isfinite(settings.temperature)):
        bad("temperature", "must be a finite number >= 0 (0 = greedy)")
    if not isinstance(settings.top_k, (int, np.integer)) or settings.top_k < 0:
        bad("top_k", "must be an integer >= 0 (0 disables)")
    if not 0.0 < settings.top_p <= 1.0:
        bad("top_p", "must lie in (0, 1] (1 disables)")
    if not (settings.guidance >= 0 and math.isfinite(settings.guidance)):
        bad("guidance", "must be a finite number >= 0 (0 disables)")
    if settings.guidance > 0 and not conditional:
        bad("guidance", "classifier-free guidance needs a conditional task (t2i, i2t, t2s, s2t); use 0")
    if settings.ordering not in ORDERINGS:
        bad("ordering", f"allowed: {', '.join(ORDERINGS)}")
    if not 0.0 <= settings.remask < 1.0:
        bad("remask", "must lie in [0, 1)")
    if settings.remask > 0 and settings.method != "confidence":
        bad("remask", 'remasking needs method="confidence"')


# ---------------------------------------------------------------------------------------------
# Time grid and reveal schedule (host side, float64)
# ---------------------------------------------------------------------------------------------
def time_grid(steps: int, grid: str = "linear") -> np.ndarray:
    """[steps + 1] times from t_0 = 1 down to t_T = 0."""
    frac = np.arange(steps + 1, dtype=np.float64) / steps
    if grid == "linear":
        t = 1.0 - frac
    elif grid == "cosine":
        t = np.cos(0.5 * np.pi * frac)
    else:
        raise SamplingError(f"sampling.grid={grid!r}: allowed: {', '.join(GRIDS)}")
    t[0], t[-1] = 1.0, 0.0
    return t


def unmask_probability(alpha_s: Any, alpha_t: Any) -> Any:
    """Probability that a token masked at time t is unmasked at the earlier time s < t."""
    return (alpha_s - alpha_t) / (1.0 - alpha_t)


def reveal_fractions(alpha_fn: AlphaFn, times: np.ndarray) -> np.ndarray:
    """a_j = P(revealed by t_j) when everything is masked at t_0 = 1: (alpha(t_j) - alpha(1)) / (1 - alpha(1)).

    Equals 1 - prod_{k < j} (1 - unmask_probability(alpha(t_{k+1}), alpha(t_k))). Forced to 0 at t = 1
    and 1 at t = 0, and made non-decreasing (guards schedules evaluated in low precision).
    """
    alpha = np.asarray(alpha_fn(np.asarray(times)), dtype=np.float64).reshape(times.shape)
    alpha_1 = alpha[0]
    if not alpha_1 < 1.0:
        raise SamplingError(f"schedule has alpha(1)={alpha_1}: nothing is ever masked, nothing to sample")
    frac = (alpha - alpha_1) / (1.0 - alpha_1)
    frac[0], frac[-1] = 0.0, 1.0
    return np.clip(np.maximum.accumulate(frac), 0.0, 1.0)


def _round8(n: float, cap: int) -> int:
    return int(min(cap, max(8, 8 * math.ceil(n / 8))))


def gather_budget(fractions: np.ndarray, rows: int, seq_len: int, settings: SamplerSettings) -> int:
    """Static number of positions a step draws at on its fast path.

    Ancestral: positions of the whole batch (flattened), since reveal counts vary by row: the largest
    expected count per step plus 5 standard deviations (binomial) and some slack, a multiple of 8; a
    step that reveals more (rare) takes the all-positions path. Confidence: per row, an exact bound.
    """
    per_step = float(np.diff(fractions).max())
    if settings.method == "confidence":
        # round(N a_{j+1}) - round(N a_j) <= N (a_{j+1} - a_j) + 1, plus the re-masked tokens.
        return int(min(seq_len, math.ceil(per_step * seq_len) + 1 + math.ceil(settings.remask * seq_len)))
    mean = per_step * rows * seq_len
    budget = 8 * math.ceil((mean + 5.0 * math.sqrt(mean) + 8) / 8)
    return int(min(rows * seq_len, budget))


# ---------------------------------------------------------------------------------------------
# Logit processing on the gathered slice [..., V_target]
# ---------------------------------------------------------------------------------------------
def guided_log_probs(cond: jax.Array, uncond: jax.Array | None, scale: float) -> jax.Array:
    """(1 + w) log p(x | c) - w log p(x | no c); with uncond None (or w = 0): log p(x | c)."""
    log_c = jax.nn.log_softmax(cond.astype(jnp.float32), axis=-1)
    if uncond is None or scale == 0:
        return log_c
    log_u = jax.nn.log_softmax(uncond.astype(jnp.float32), axis=-1)
    return (1.0 + scale) * log_c - scale * log_u


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def apply_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability reaches p (always the top one)."""
    if p >= 1.0:
        return logits
    ordered = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    kept = jnp.where(before < p, ordered, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def draw_tokens(log_probs: jax.Array, key: jax.Array, settings: SamplerSettings) -> jax.Array:
    """Temperature, top-k, top-p, then Gumbel-max in float32 ("high" mode). Returns local ids [...]."""
    if settings.temperature == 0:
        return jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    x = log_probs.astype(jnp.float32) / settings.temperature
    x = apply_top_p(apply_top_k(x, settings.top_k), settings.top_p)
    gumbel = jax.random.gumbel(key, x.shape, jnp.float32, mode="high")
    return jnp.argmax(x + gumbel, axis=-1).astype(jnp.int32)


def confidence(log_probs: jax.Array, ordering: str) -> jax.Array:
    """Higher = more confident. log_probs [..., V] normalised."""
    if ordering == "max_prob":
        return jnp.max(log_probs, axis=-1)
    if ordering == "margin":
        top2 = jax.lax.top_k(log_probs, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    if ordering == "entropy":
        return jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)  # = -entropy
    raise SamplingError(f"sampling.ordering={ordering!r}: allowed: {', '.join(ORDERINGS)}")


# ---------------------------------------------------------------------------------------------
# The compiled sampler
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    settings: SamplerSettings
    fractions: tuple[float, ...]  # a_j, j = 0..T
    vocab_range: tuple[int, int]
    mask_id: int
    budget: int
    history: bool
    cfg: bool  # run the two-branch (guided) forward


class Sampler:
    """A compiled sampler: ``Sampler(logits_fn, alpha_fn, settings, vocab_range, mask_id)(params, batch, key)``.

    ``cfg_branch`` (default: guidance > 0) runs the two-branch guided forward pass.
    Returns a dict with ``tokens`` [B, L] (targets filled, everything else as given), ``nfe`` (forward
    passes run; a guided pass over 2B rows counts once) and, with ``history=True``, ``history``
    [T, B, L] (tokens after each step). Compiles once per (shapes, settings).
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        alpha_fn: AlphaFn,
        settings: SamplerSettings,
        vocab_range: tuple[int, int],
        mask_id: int,
        *,
        conditional: bool = True,
        history: bool = False,
        cfg_branch: bool | None = None,
    ) -> None:
        check_settings(settings, conditional=conditional)
        lo, hi = int(vocab_range[0]), int(vocab_range[1])
        if not 0 <= lo < hi:
            raise SamplingError(f"vocab_range={vocab_range!r}: need 0 <= lo < hi")
        self.settings = settings
        self.vocab_range = (lo, hi)
        self.mask_id = int(mask_id)
        self.fractions = reveal_fractions(alpha_fn, time_grid(settings.steps, settings.grid))
        self.history = history
        # None: guide iff guidance > 0. True at w = 0 checks that w = 0 is exactly the conditional sampler.
        self.cfg = settings.guidance > 0 if cfg_branch is None else bool(cfg_branch)
        self._logits_fn = logits_fn
        self._jitted = jax.jit(self._run, static_argnums=(0,))

    def static(self, rows: int, seq_len: int) -> _Static:
        budget = gather_budget(self.fractions, rows, seq_len, self.settings)
        return _Static(self.settings, tuple(float(a) for a in self.fractions), self.vocab_range, self.mask_id, budget, self.history, self.cfg)

    def __call__(self, params: Any, batch: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
        batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
        for name in ("tokens", "loss_mask", "cond_mask", "modality", "segment_ids", "positions"):
            if name not in batch:
                raise SamplingError(f"batch lacks {name!r}; a batch follows mdiff/data/layout.py")
        return self._jitted(self.static(*batch["tokens"].shape), params, batch, key)

    # -- inside jit ------------------------------------------------------------------------
    def _run(self, st: _Static, params: Any, batch: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        s = st.settings
        targets = batch["loss_mask"] > 0
        tokens = jnp.where(targets, st.mask_id, batch["tokens"])
        fractions = jnp.asarray(st.fractions, jnp.float32)
        key_reveal, key_steps = jax.random.split(key)
        forward = functools.partial(self._forward, st, params, batch)
        if s.method == "ancestral":
            u = jax.random.uniform(key_reveal, targets.shape, jnp.float32)
            reveal_step = jnp.searchsorted(fractions[1:], u, side="right").astype(jnp.int32)
            carry = (tokens, jnp.int32(0))

            def body(carry, j):
                tokens, nfe = carry
                reveal = targets & (reveal_step == j)
                tokens, ran = jax.lax.cond(
                    jnp.any(reveal),
                    lambda t: (self._commit(st, forward, t, reveal, jax.random.fold_in(key_steps, j)), 1),
                    lambda t: (t, 0),
                    tokens,
                )
                return (tokens, nfe + ran), (tokens if st.history else None)

        else:
            n_targets = targets.sum(-1).astype(jnp.float32)
            conf0 = jnp.zeros(targets.shape, jnp.float32)
            carry = ((tokens, conf0), jnp.int32(0))

            def body(carry, j):
                (tokens, conf), nfe = carry
                tokens = self._remask(st, tokens, conf, targets, j)
                masked = targets & (tokens == st.mask_id)
                goal = jnp.round(n_targets * fractions[j + 1]).astype(jnp.int32)
                k = goal - (targets & ~masked).sum(-1)  # [B] positions to commit this step
                state, ran = jax.lax.cond(
                    jnp.any(k > 0),
                    lambda tc: (self._commit_confident(st, forward, tc, masked, k, jax.random.fold_in(key_steps, j)), 1),
                    lambda tc: (tc, 0),
                    (tokens, conf),
                )
                return (state, nfe + ran), (state[0] if st.history else None)

        carry, hist = jax.lax.scan(body, carry, jnp.arange(s.steps, dtype=jnp.int32))
        state, nfe = carry
        final = state if s.method == "ancestral" else state[0]
        out = {"tokens": final, "nfe": nfe}
        if st.history:
            out["history"] = hist
        return out

    def _forward(self, st: _Static, params: Any, batch: dict[str, jax.Array], tokens: jax.Array):
        """Logits [B, L, V] for the conditional batch and, with guidance, the unconditional one."""
        if not st.cfg:
            return self._logits_fn(params, tokens, batch), None
        dropped = jnp.where(batch["cond_mask"] > 0, st.mask_id, tokens)
        both = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
        logits = self._logits_fn(params, jnp.concatenate([tokens, dropped]), both)
        b = tokens.shape[0]
        return logits[:b], logits[b:]

    def _gathered_log_probs(self, st: _Static, logits, idx: jax.Array) -> jax.Array:
        """Guided log-probs over the target range at flat positions idx [K] -> [K, V_target]."""
        lo, hi = st.vocab_range
        cond, uncond = logits

        def take(x):
            return jnp.take(x.reshape(-1, x.shape[-1]), idx, axis=0)[:, lo:hi].astype(jnp.float32)

        return guided_log_probs(take(cond), None if uncond is None else take(uncond), st.settings.guidance)

    def _commit(self, st: _Static, forward, tokens, reveal, key):
        """Draw tokens at the `reveal` positions: gathered fast path, all-positions fallback."""
        logits = forward(tokens)
        rows, seq_len = tokens.shape
        n = rows * seq_len
        flat_reveal = reveal.reshape(n)

        def at(budget: int):
            def run(flat_tokens):
                if budget >= n:
                    idx = jnp.arange(n, dtype=jnp.int32)
                else:
                    idx = jax.lax.top_k(flat_reveal.astype(jnp.int32), budget)[1].astype(jnp.int32)
                log_probs = self._gathered_log_probs(st, logits, idx)
                new = draw_tokens(log_probs, key, st.settings) + st.vocab_range[0]
                return flat_tokens.at[idx].set(jnp.where(flat_reveal[idx], new, flat_tokens[idx]))

            return run

        flat = tokens.reshape(n)
        if st.budget >= n:
            return at(n)(flat).reshape(rows, seq_len)
        fits = flat_reveal.sum() <= st.budget
        return jax.lax.cond(fits, at(st.budget), at(n), flat).reshape(rows, seq_len)

    def _commit_confident(self, st: _Static, forward, state, masked, k, key):
        tokens, conf = state
        logits = forward(tokens)
        lo, hi = st.vocab_range
        cond, uncond = logits
        log_probs = guided_log_probs(
            cond[..., lo:hi].astype(jnp.float32),
            None if uncond is None else uncond[..., lo:hi].astype(jnp.float32),
            st.settings.guidance,
        )
        score = jnp.where(masked, confidence(log_probs, st.settings.ordering), -jnp.inf)
        budget = st.budget
        top_score, idx = jax.lax.top_k(score, budget)
        idx = idx.astype(jnp.int32)
        valid = (jnp.arange(budget)[None, :] < k[:, None]) & jnp.isfinite(top_score)
        picked = jnp.take_along_axis(log_probs, idx[..., None], axis=1)
        new = draw_tokens(picked, key, st.settings) + lo
        rows = jnp.arange(tokens.shape[0])[:, None]
        tokens = tokens.at[rows, idx].set(jnp.where(valid, new, jnp.take_along_axis(tokens, idx, axis=1)))
        conf = conf.at[rows, idx].set(jnp.where(valid, top_score, jnp.take_along_axis(conf, idx, axis=1)))
        return tokens, conf

    def _remask(self, st: _Static, tokens, conf, targets, j):
        """Re-mask the lowest-confidence fraction of committed generated tokens (not in the last step)."""
        s = st.settings
        if s.remask == 0:
            return tokens
        committed = targets & (tokens != st.mask_id)
        r = jnp.floor(s.remask * committed.sum(-1)).astype(jnp.int32)
        r = jnp.where((j > 0) & (j < s.steps - 1), r, 0)
        order = jnp.argsort(jnp.where(committed, conf, jnp.inf), axis=-1)
        rank = jnp.argsort(order, axis=-1)
        return jnp.where(committed & (rank < r[:, None]), st.mask_id, tokens)


def sample(
    logits_fn: LogitsFn,
    params: Any,
    batch: dict[str, Any],
    key: jax.Array,
    *,
    alpha_fn: AlphaFn,
    settings: SamplerSettings,
    vocab_range: tuple[int, int],
    mask_id: int,
    conditional: bool = True,
    history: bool = False,
    cfg_branch: bool | None = None,
) -> dict[str, jax.Array]:
    """One-shot convenience wrapper around `Sampler` (compiles on each new settings/shape)."""
    sampler = Sampler(
        logits_fn, alpha_fn, settings, vocab_range, mask_id, conditional=conditional, history=history, cfg_branch=cfg_branch
    )
    return sampler(params, batch, key)
