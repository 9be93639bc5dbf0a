"""Sampler tests against an oracle denoiser that knows the data distribution exactly."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdiff.data.layout import layout_example, pack
from mdiff.vocab import UnifiedVocab
from mdiff.diffusion import sampling as S

VOCAB = UnifiedVocab(text_size=3, image_size=3, audio_size=2)
LO, HI = VOCAB.range("text")
N_SYM = HI - LO


def linear_alpha(t):
    return 1.0 - np.asarray(t)


def cosine_alpha(t):
    return np.cos(0.5 * np.pi * np.asarray(t))


def correlated_joint(length: int, seed: int = 0) -> np.ndarray:
    """A joint over N_SYM**length sequences with strong dependence (half its mass on constant rows)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(N_SYM**length, 3.0)).reshape((N_SYM,) * length)
    for v in range(N_SYM):
        p[(v,) * length] += 1.0 / N_SYM
    return p / p.sum()


def oracle_logits_fn(joint: np.ndarray, positions: list[int], offsets: list[int], outside: float = 10.0):
    """Exact p(x_i | unmasked variables) at the variable positions (joint's axes, ids = offset + local).

    Logits outside each variable's range are large, to check that the sampler restricts the vocabulary.
    """
    configs = np.array(list(itertools.product(*[range(n) for n in joint.shape])), np.int32)  # [C, n]
    probs = jnp.asarray(joint.reshape(-1))
    pos = np.asarray(positions)
    off = np.asarray(offsets, np.int32)
    width = max(joint.shape)

    def logits_fn(params, tokens, batch):
        ids = tokens[:, pos]
        masked = ids == VOCAB.mask_id
        consistent = jnp.all(masked[:, None, :] | (configs[None] == (ids - off)[:, None, :]), axis=-1)
        w = probs[None] * consistent  # [B, C]
        marg = jnp.einsum("bc,cnv->bnv", w, jax.nn.one_hot(configs, width))
        log_marg = jnp.log(marg / marg.sum(-1, keepdims=True))
        logits = jnp.full(tokens.shape + (VOCAB.size,), outside, jnp.float32)
        for i, (p, o) in enumerate(zip(positions, offsets)):
            logits = logits.at[:, p, o : o + joint.shape[i]].set(log_marg[:, i, : joint.shape[i]])
        return logits

    return logits_fn


def text_oracle(joint: np.ndarray):
    n = joint.ndim
    return oracle_logits_fn(joint, list(range(1, 1 + n)), [LO] * n)


def text_batch(length: int, rows: int) -> dict:
    example = layout_example(VOCAB, "text", np.full(length, LO))
    row = pack(VOCAB, [example], length + 3)  # two padding positions stay frozen
    return {k: np.repeat(v[None], rows, 0) for k, v in row.items()}


def empirical_counts(tokens: np.ndarray, target_slice: slice, length: int) -> np.ndarray:
    local = np.asarray(tokens)[:, target_slice] - LO
    flat = np.ravel_multi_index(tuple(local.T), (N_SYM,) * length)
    return np.bincount(flat, minlength=N_SYM**length)


@pytest.mark.parametrize("grid,alpha", [("linear", linear_alpha), ("cosine", cosine_alpha)])
def test_ancestral_sampler_reproduces_oracle_distribution(grid, alpha):
    length, rows = 3, 8000
    joint = correlated_joint(length)
    target = slice(1, 1 + length)
    batch = text_batch(length, rows)
    fn = text_oracle(joint)
    settings = S.SamplerSettings(steps=128, grid=grid)
    out = S.sample(fn, None, batch, jax.random.key(0), alpha_fn=alpha, settings=settings, vocab_range=(LO, HI), mask_id=VOCAB.mask_id, conditional=False)
    tokens = np.asarray(out["tokens"])
    assert np.all((tokens[:, target] >= LO) & (tokens[:, target] < HI))  # never outside the range
    counts = empirical_counts(tokens, target, length)
    p_value = stats.chisquare(counts, joint.reshape(-1) * rows).pvalue
    assert p_value > 1e-3, p_value
    # Skipped steps: fewer forward passes than steps only when some step reveals nothing anywhere.
    assert 0 < int(out["nfe"]) <= 128

    # Negative control: one step draws every position from its marginal, which the test must reject.
    one = S.sample(fn, None, batch, jax.random.key(0), alpha_fn=alpha, settings=S.SamplerSettings(steps=1), vocab_range=(LO, HI), mask_id=VOCAB.mask_id, conditional=False)
    counts = empirical_counts(np.asarray(one["tokens"]), target, length)
    assert stats.chisquare(counts, joint.reshape(-1) * rows).pvalue < 1e-6


def run(fn, batch, settings, *, alpha=linear_alpha, key=0, vocab_range=(LO, HI), **kw):
    out = S.sample(fn, None, batch, jax.random.key(key), alpha_fn=alpha, settings=settings, vocab_range=vocab_range, mask_id=VOCAB.mask_id, **kw)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("budget", [None, 8])
def test_reveal_rates_match_exact_unmasking_probabilities_and_revealed_tokens_stay_frozen(budget, monkeypatch):
    if budget is not None:  # force over-full steps onto the all-positions path
        monkeypatch.setattr(S, "gather_budget", lambda *a: budget)
    length, rows, steps = 3, 4000, 6
    batch = text_batch(length, rows)
    out = run(text_oracle(correlated_joint(length)), batch, S.SamplerSettings(steps=steps, grid="cosine"), alpha=cosine_alpha, conditional=False, history=True)
    hist = np.concatenate([np.where(batch["loss_mask"] > 0, VOCAB.mask_id, batch["tokens"])[None], out["history"]])
    t = S.time_grid(steps, "cosine")
    a = cosine_alpha(t)
    targets = batch["loss_mask"] > 0
    for j in range(steps):
        before, after = hist[j][targets], hist[j + 1][targets]
        was_masked = before == VOCAB.mask_id
        rate = np.mean(after[was_masked] != VOCAB.mask_id)
        expected = S.unmask_probability(a[j + 1], a[j])
        sigma = np.sqrt(expected * (1 - expected) / was_masked.sum()) + 1e-9
        assert abs(rate - expected) < 5 * sigma, (j, rate, expected)
        assert np.array_equal(after[~was_masked], before[~was_masked])  # unmasked tokens are frozen
        assert np.array_equal(hist[j + 1][~targets], batch["tokens"][~targets])  # non-targets untouched
    assert not np.any(hist[-1][targets] == VOCAB.mask_id)


# A conditional task (i2t): condition = one image token at position 2, target = text at 5..5+n.
IMG_LO = VOCAB.range("image")[0]


def i2t_batch(length: int, rows: int, cond_local: int) -> dict:
    example = layout_example(VOCAB, "i2t", np.full(length, LO), np.array([IMG_LO + cond_local]))
    row = pack(VOCAB, [example], len(example["tokens"]) + 1)
    return {k: np.repeat(v[None], rows, 0) for k, v in row.items()}


def i2t_oracle(joint: np.ndarray):
    n = joint.ndim - 1
    return oracle_logits_fn(joint, [2] + list(range(5, 5 + n)), [IMG_LO] + [LO] * n)


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_guidance_scale_zero_is_exactly_the_conditional_sampler(method):
    joint = correlated_joint(3, seed=1)  # axis 0: condition, axes 1-2: targets
    batch = i2t_batch(2, 128, cond_local=1)
    fn = i2t_oracle(joint)
    settings = S.SamplerSettings(steps=8, method=method, guidance=0.0)
    plain = run(fn, batch, settings)
    branched = run(fn, batch, settings, cfg_branch=True)
    assert np.array_equal(plain["tokens"], branched["tokens"])
    assert np.array_equal(plain["nfe"], branched["nfe"])


def test_guided_sampler_draws_from_the_guided_distribution():
    rng = np.random.default_rng(3)
    joint = rng.dirichlet(np.ones(N_SYM * N_SYM) * 2).reshape(N_SYM, N_SYM)
    rows, c, w = 20000, 2, 1.5
    out = run(i2t_oracle(joint), i2t_batch(1, rows, c), S.SamplerSettings(steps=4, guidance=w))
    counts = np.bincount(out["tokens"][:, 5] - LO, minlength=N_SYM)
    cond = joint[c] / joint[c].sum()
    marg = joint.sum(0)
    guided = cond ** (1 + w) * marg ** (-w)
    guided /= guided.sum()
    assert stats.chisquare(counts, guided * rows).pvalue > 1e-3
    assert stats.chisquare(counts, cond * rows).pvalue < 1e-6  # and it is not the unguided one
    assert np.all(out["tokens"][:, 2] == IMG_LO + c)  # the condition is frozen


def test_confidence_decoding_commits_scheduled_counts_most_confident_first_and_keeps_conditions():
    joint = correlated_joint(4, seed=2)
    rows, n = 64, 3
    batch = i2t_batch(n, rows, cond_local=0)
    fn = i2t_oracle(joint)
    settings = S.SamplerSettings(steps=n, method="confidence", temperature=0.0, ordering="max_prob")
    out = run(fn, batch, settings, history=True)
    start = np.where(batch["loss_mask"] > 0, VOCAB.mask_id, batch["tokens"])
    hist = np.concatenate([start[None], out["history"]])
    targets = batch["loss_mask"][0] > 0
    for j in range(n):
        assert np.all((hist[j + 1][:, targets] != VOCAB.mask_id).sum(-1) == j + 1)  # one per step
    first = np.argmax(hist[1][:, targets] != VOCAB.mask_id, axis=-1)
    log_probs = np.asarray(fn(None, jnp.asarray(start), None))[:, targets, LO:HI]
    best = log_probs.max(-1)
    assert np.all(best[np.arange(rows), first] >= best.max(-1) - 1e-6)  # the most confident went first
    # greedy: the committed token is the argmax of its distribution at that moment
    assert np.all(hist[1][np.arange(rows), np.flatnonzero(targets)[first]] == LO + log_probs.argmax(-1)[np.arange(rows), first])

    remasking = S.SamplerSettings(steps=8, method="confidence", remask=0.3, ordering="entropy")
    out = run(fn, batch, remasking, history=True)
    assert np.all(out["history"][:, :, ~targets] == batch["tokens"][None][:, :, ~targets])  # conditions frozen
    assert not np.any(out["tokens"][:, targets] == VOCAB.mask_id)
    assert np.all((out["tokens"][:, targets] >= LO) & (out["tokens"][:, targets] < HI))


def test_top_k_top_p_and_temperature_processing():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(np.asarray(S.apply_top_k(logits, 2))).sum() == 2
    kept = lambda p: int(np.isfinite(np.asarray(S.apply_top_p(logits, p))).sum())  # noqa: E731
    assert [kept(0.4), kept(0.5), kept(0.8), kept(0.81), kept(0.96), kept(1.0)] == [1, 1, 2, 3, 4, 4]
    greedy = S.SamplerSettings(temperature=0.0)
    assert int(S.draw_tokens(logits, jax.random.key(0), greedy)[0]) == 0
    draws = jax.vmap(lambda k: S.draw_tokens(logits[0], k, S.SamplerSettings(top_p=0.8)))(jax.random.split(jax.random.key(1), 4000))
    counts = np.bincount(np.asarray(draws), minlength=4)
    assert counts[2:].sum() == 0 and stats.chisquare(counts[:2], np.array([0.625, 0.375]) * 4000).pvalue > 1e-3


@pytest.mark.parametrize(
    "changes,conditional,message",
    [
        (dict(steps=0), True, "steps=0"),
        (dict(top_p=0.0), True, "top_p=0.0"),
        (dict(top_p=1.5), True, "top_p=1.5"),
        (dict(guidance=2.0), False, "guidance=2.0: classifier-free guidance needs a conditional task"),
        (dict(grid="log"), True, "grid='log'"),
        (dict(method="greedy"), True, "method='greedy'"),
        (dict(remask=0.2), True, "remask=0.2"),
        (dict(temperature=-1.0), True, "temperature=-1.0"),
    ],
)
def test_bad_settings_are_clear_errors(changes, conditional, message):
    settings = S.SamplerSettings(**changes)
    with pytest.raises(S.SamplingError, match=message.replace("(", r"\(").replace(".", r"\.")):
        S.Sampler(text_oracle(correlated_joint(2)), linear_alpha, settings, (LO, HI), VOCAB.mask_id, conditional=conditional)


@pytest.mark.parametrize(
    "override,message",
    [
        ("sampling.text.guidance=1.0", "config.sampling.text.guidance=1.0: classifier-free guidance needs a conditional task"),
        ("sampling.t2i.steps=0", "config.sampling.t2i.steps=0: must be an integer >= 1"),
        ("sampling.t2s.top_p=1.5", "config.sampling.t2s.top_p=1.5: must lie in (0, 1]"),
        ("sampling.i2t.method=beam", "config.sampling.i2t.method='beam': allowed: ancestral, confidence"),
    ],
)
def test_per_task_sampling_defaults_are_validated(override, message):
    from mdiff.config import ConfigError, apply_overrides, validate
    from mdiff.defaults import base_config

    validate(base_config())  # the shipped defaults are valid
    config = apply_overrides(base_config(), [f"--config.{override}"])
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert message in str(err.value)
    for task in ("text", "t2i", "i2t", "t2s", "s2t"):  # every task has its own section with every setting
        assert set(base_config().sampling[task].keys()) == set(S.SamplerSettings.__dataclass_fields__)
