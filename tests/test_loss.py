"""The MDM loss: closed-form ELBO identity across schedules, masking rules, metrics, anti-masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiff.vocab import Modality, UnifiedVocab
from mdiff.diffusion.loss import corrupt, mdm_loss, per_token_metrics, sample_times
from mdiff.diffusion.schedules import get_schedule

VOCAB = UnifiedVocab(20, 10, 10)
TEXT_LO = VOCAB.offset("text")
IMAGE_LO = VOCAB.offset("image")


def uniform_schedules(name):
    return {m: get_schedule(name) for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)}


def text_batch(batch, length, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(TEXT_LO, TEXT_LO + 20, (batch, length)).astype(np.int32)
    ones = np.ones((batch, length), np.int32)
    return dict(
        tokens=tokens, modality=ones * int(Modality.TEXT), loss_mask=ones, cond_mask=ones * 0,
        segment_ids=ones, positions=np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
    )


def logits_with_nll(nll, batch):
    """Logits over VOCAB whose -log p(clean token) equals `nll` [B, L] (a synthetic denoiser)."""
    p = jnp.exp(-nll)
    target_logit = jnp.log((VOCAB.size - 1) * p / (1 - p))
    onehot = jax.nn.one_hot(batch["tokens"], VOCAB.size)
    return onehot * target_logit[..., None]


def fraction_masked_denoiser(noisy, batch):
    """-log p = g(k / L) = 0.5 + k / L, where k = masked positions in the row."""
    frac = jnp.mean(noisy == VOCAB.mask_id, axis=1, keepdims=True)
    return logits_with_nll(jnp.broadcast_to(0.5 + frac, noisy.shape), batch)


def noisy_inputs(data, key, **kwargs):
    """(noisy tokens, the batch) the denoiser sees, under jit; kwargs go to mdm_loss."""

    @jax.jit
    def run(data, key):
        seen = {}

        def spy(noisy, batch):
            seen["noisy"], seen["tokens"] = noisy, batch["tokens"]
            return jnp.zeros(noisy.shape + (VOCAB.size,))

        _, metrics = mdm_loss(spy, data, key, vocab=VOCAB, **kwargs)
        return seen["noisy"], seen["tokens"], metrics

    return run(data, key)


def mean_and_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


@pytest.mark.parametrize("anti_masking", [False, True])
@pytest.mark.parametrize("name", ["linear", "cosine", "sine", "polynomial(3)"])
def test_elbo_matches_closed_form_for_every_schedule(name, anti_masking):
    # For any denoiser that does not see t, E_t[w(t) sum_masked nll] = sum_{k=1..L} g(k/L),
    # whatever the schedule (change of variables to the masking rate; see tests docstring above).
    length, batch = 8, 2048
    exact = sum(0.5 + k / length for k in range(1, length + 1))
    data = {k: jnp.asarray(v) for k, v in text_batch(batch, length).items()}

    @jax.jit
    def nelbo_per_sequence(rng):
        _, m = mdm_loss(
            fraction_masked_denoiser, data, rng, vocab=VOCAB, schedules=uniform_schedules(name),
            t_min=1e-5, antithetic=True, anti_masking=anti_masking,
        )
        return m["nelbo_sum"] / data["tokens"].shape[0]

    # 16 independent batch means; their spread gives the Monte Carlo error of the overall mean.
    mean, se = mean_and_se([nelbo_per_sequence(jax.random.key(seed)) for seed in range(16)])
    assert se < 0.01 * exact
    assert abs(mean - exact) < 4 * se, (name, mean, exact, se)


def test_per_modality_schedules_give_per_modality_sums():
    # Constant nll per modality: the expected NELBO sum is count * nll, whatever each modality's schedule.
    length, batch = 8, 8192
    data = text_batch(batch, length)
    data["modality"][:, 4:] = int(Modality.IMAGE)
    data["tokens"][:, 4:] = IMAGE_LO + 3
    data = {k: jnp.asarray(v) for k, v in data.items()}
    nll = jnp.where(data["modality"] == Modality.TEXT, 1.0, 2.0)
    schedules = {Modality.TEXT: get_schedule("cosine"), Modality.IMAGE: get_schedule("polynomial(2)"),
                 Modality.AUDIO: get_schedule("linear")}
    loss = jax.jit(lambda d, k: mdm_loss(lambda x, b: logits_with_nll(nll, b), d, k, vocab=VOCAB,
                                         schedules=schedules, t_min=1e-5)[1])
    m = loss(data, jax.random.key(1))
    out = per_token_metrics(jax.device_get(m))
    assert out["loss/text"] == pytest.approx(1.0, rel=0.04)
    assert out["loss/image"] == pytest.approx(2.0, rel=0.04)
    assert "loss/audio" not in out
    assert out["bits/image"] == pytest.approx(out["loss/image"] / math.log(2))
    assert float(m["nelbo_sum"]) == pytest.approx(float(m["nelbo_sum/text"] + m["nelbo_sum/image"]), rel=1e-5)


def test_padding_never_counts_and_conditions_never_masked():
    data = text_batch(64, 12)
    data["loss_mask"][:, :3] = 0
    data["cond_mask"][:, :3] = 1  # a condition
    data["loss_mask"][:, -2:] = 0
    data["modality"][:, -2:] = 0
    data["segment_ids"][:, -2:] = 0
    data["tokens"][:, -2:] = VOCAB.pad_id
    data = {k: jnp.asarray(v) for k, v in data.items()}
    noisy, _, m = noisy_inputs(data, jax.random.key(0), schedules=uniform_schedules("linear"), cond_dropout=0.0)
    assert float(m["count"]) == 64 * 7
    noisy = np.asarray(noisy)
    assert not np.any(noisy[:, :3] == VOCAB.mask_id), "condition tokens must never be masked"
    assert not np.any(noisy[:, -2:] == VOCAB.mask_id), "padding must never be masked"
    assert np.any(noisy[:, 3:-2] == VOCAB.mask_id)


def test_condition_dropout_is_per_example():
    data = text_batch(2000, 6)
    data["loss_mask"][:, :3] = 0
    data["cond_mask"][:, :3] = 1
    data = {k: jnp.asarray(v) for k, v in data.items()}
    noisy, _, _ = noisy_inputs(data, jax.random.key(3), schedules=uniform_schedules("linear"), cond_dropout=0.3)
    dropped = np.asarray(noisy)[:, :3] == VOCAB.mask_id
    assert np.all(dropped.all(axis=1) | ~dropped.any(axis=1)), "a condition is dropped whole or not at all"
    assert dropped[:, 0].mean() == pytest.approx(0.3, abs=0.04)


def test_antithetic_times_are_stratified_and_clipped():
    t = np.sort(np.asarray(sample_times(jax.random.key(0), 16, t_min=0.01, antithetic=True)))
    assert t.min() >= 0.01 and t.max() <= 0.99
    np.testing.assert_allclose(np.diff(t), 0.98 / 16, rtol=1e-4)


def test_anti_masking_pairs_complementary_masks():
    data = {k: jnp.asarray(v) for k, v in text_batch(8, 32).items()}
    noisy, tokens, _ = noisy_inputs(data, jax.random.key(0), schedules=uniform_schedules("cosine"), anti_masking=True)
    masked = np.asarray(noisy) == VOCAB.mask_id
    np.testing.assert_array_equal(np.asarray(tokens)[0::2], np.asarray(tokens)[1::2])  # pairs are adjacent rows
    np.testing.assert_array_equal(np.asarray(tokens)[0::2], np.asarray(data["tokens"])[0::2])
    np.testing.assert_array_equal(masked[0::2], ~masked[1::2])
    with pytest.raises(ValueError, match="must be even"):
        noisy_inputs({k: v[:3] for k, v in data.items()}, jax.random.key(0), schedules=uniform_schedules("linear"),
                     anti_masking=True)


def test_corrupt_rate_follows_schedule():
    data = {k: jnp.asarray(v) for k, v in text_batch(256, 64).items()}
    t = jnp.full((256,), 0.3)
    _, masked = jax.jit(lambda d, t: corrupt(jax.random.key(0), d, t, vocab=VOCAB,
                                             schedules=uniform_schedules("polynomial(2)")))(data, t)
    assert float(masked.mean()) == pytest.approx(0.09, abs=0.01)


# ---------------------------------------------------------------------------------------------
# The ELBO is a true bound: a small model trained briefly reaches the data entropy from above.
# ---------------------------------------------------------------------------------------------
def markov_sequences(rng, n, length, transition, start):
    seq = np.zeros((n, length), np.int64)
    seq[:, 0] = rng.choice(len(start), size=n, p=start)
    cum = np.cumsum(transition, axis=1)
    for i in range(1, length):
        u = rng.random(n)[:, None]
        seq[:, i] = (u > cum[seq[:, i - 1]]).sum(axis=1)
    return seq


def entropy(p):
    p = np.asarray(p, np.float64)
    return float(-(p * np.log(p)).sum(axis=-1).sum()) if p.ndim == 1 else None


def train_and_evaluate_nelbo(transition, start, *, length, steps, width, depth, lr, batch=64, seed=0):
    """Train on sequences of the chain; return (test NELBO per token, its standard error, true entropy/token)."""
    import optax
    from flax import nnx

    from mdiff.model import build_model

    k = len(start)
    vocab = UnifiedVocab(k, 1, 1)
    lo = vocab.offset("text")
    schedules = uniform_schedules("linear")
    model = build_model(dict(width=width, depth=depth, heads=2, mlp_hidden=2 * width), vocab, length, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1)), wrt=nnx.Param)
    rng = np.random.default_rng(seed)

    def batch_of(tokens):
        ones = np.ones_like(tokens, dtype=np.int32)
        return dict(tokens=jnp.asarray(tokens + lo, jnp.int32), modality=jnp.asarray(ones), loss_mask=jnp.asarray(ones),
                    cond_mask=jnp.asarray(0 * ones), segment_ids=jnp.asarray(ones),
                    positions=jnp.asarray(np.broadcast_to(np.arange(length), tokens.shape), jnp.int32))

    def loss_fn(m, batch, key):
        fn = lambda x, b: m(x, b["modality"], b["segment_ids"], b["positions"])  # noqa: E731
        return mdm_loss(fn, batch, key, vocab=vocab, schedules=schedules)

    @nnx.jit
    def train_step(m, o, batch, key):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, batch, key)
        o.update(m, grads)
        return loss

    @nnx.jit
    def eval_step(m, batch, key):
        return loss_fn(m, batch, key)[1]

    for step in range(steps):
        train_step(model, opt, batch_of(markov_sequences(rng, batch, length, transition, start)), jax.random.key(step))
    test_rng = np.random.default_rng(10_000 + seed)
    per_batch = []
    for i in range(48):  # the 1/t weight makes single estimates noisy: average many
        m = eval_step(model, batch_of(markov_sequences(test_rng, 512, length, transition, start)), jax.random.key(-1 - i))
        per_batch.append(float(m["nelbo_sum"]) / float(m["count"]))
    mean, se = mean_and_se(per_batch)
    # Entropy of the whole sequence: H(start) + (L - 1) * entropy rate (start is stationary).
    rate = float(np.sum(start * -(transition * np.log(transition)).sum(axis=1)))
    true = (entropy(start) + (length - 1) * rate) / length
    return mean, se, true


def test_trained_nelbo_reaches_entropy_of_independent_tokens():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8) * 0.7)
    transition = np.tile(p, (8, 1))  # rows equal: tokens are independent draws from p
    nelbo, se, true = train_and_evaluate_nelbo(transition, p, length=16, steps=300, width=32, depth=1, lr=3e-3)
    assert nelbo > true - 4 * se, f"NELBO {nelbo:.4f} below the entropy {true:.4f} (se {se:.4f}): not a bound"
    assert nelbo < 1.02 * true, f"NELBO {nelbo:.4f} not within 2% of the entropy {true:.4f}"


@pytest.mark.slow
def test_trained_nelbo_reaches_entropy_of_a_markov_chain():
    rng = np.random.default_rng(2)
    transition = rng.dirichlet(np.ones(6) * 0.5, size=6)
    evals, evecs = np.linalg.eig(transition.T)
    start = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    start = start / start.sum()
    nelbo, se, true = train_and_evaluate_nelbo(transition, start, length=16, steps=3000, width=64, depth=2, lr=3e-3, batch=128)
    assert nelbo > true - 4 * se, f"NELBO {nelbo:.4f} below the entropy {true:.4f} (se {se:.4f}): not a bound"
    assert nelbo < 1.02 * true, f"NELBO {nelbo:.4f} not within 2% of the entropy {true:.4f}"


def test_same_transformer_same_mean_nelbo_under_every_schedule():
    from flax import nnx

    from mdiff.model import build_model

    vocab = UnifiedVocab(8, 1, 1)
    model = build_model(dict(width=16, depth=1, heads=2, mlp_hidden=32), vocab, 8, rngs=nnx.Rngs(3))
    tokens = np.random.default_rng(0).integers(*vocab.range("text"), (512, 8)).astype(np.int32)
    ones = np.ones_like(tokens)
    data = dict(tokens=tokens, modality=ones, loss_mask=ones, cond_mask=0 * ones, segment_ids=ones,
                positions=np.broadcast_to(np.arange(8, dtype=np.int32), tokens.shape).copy())
    data = {k: jnp.asarray(v) for k, v in data.items()}
    names = ("linear", "cosine", "polynomial(2)")

    @nnx.jit
    def run(m, d, k):  # one compile for all schedules
        fn = lambda x, b: m(x, b["modality"], b["segment_ids"], b["positions"])  # noqa: E731
        return [mdm_loss(fn, d, k, vocab=vocab, schedules=uniform_schedules(n), t_min=1e-5)[0] for n in names]

    draws = np.array([run(model, data, jax.random.key(s)) for s in range(10)])
    estimates = {n: mean_and_se(draws[:, i]) for i, n in enumerate(names)}
    (m0, s0) = estimates["linear"]
    for name, (m, s) in estimates.items():
        assert abs(m - m0) < 4 * math.hypot(s, s0), (estimates, name)


@pytest.mark.parametrize("fill_targets", [False, True])
def test_slot_fill_is_a_target_only_when_asked_and_its_share_is_reported(fill_targets):
    # Rows of 12 text positions whose last 4 are slot fill: given (loss_mask 0: never masked, not
    # counted) by default; with the fill option (loss_mask 2) they are targets and their share is 4/12.
    data = text_batch(64, 12)
    data["loss_mask"][:, -4:] = 2 if fill_targets else 0
    data = {k: jnp.asarray(v) for k, v in data.items()}
    noisy, _, m = noisy_inputs(data, jax.random.key(0), schedules=uniform_schedules("linear"), t_min=0.4)
    out = per_token_metrics(jax.device_get(m))
    assert float(m["count/text"]) == 64 * (12 if fill_targets else 8)
    if fill_targets:
        assert out["fill_share/text"] == pytest.approx(4 / 12)
        assert np.any(np.asarray(noisy)[:, -4:] == VOCAB.mask_id)
    else:
        assert "fill_share/text" not in out
        assert not np.any(np.asarray(noisy)[:, -4:] == VOCAB.mask_id)


@pytest.mark.parametrize("t_min", [1e-3, 0.05])
@pytest.mark.parametrize("name", ["geometric(0.01,20)", "geometric(1,20)", "cosine"])
def test_uniform_denoiser_scores_log_v_per_token(name, t_min):
    # A denoiser that predicts uniformly over the text range has -log p = log V_text at every masked
    # position, so the complete bound is exactly log V_text per token (one nat of weight per token,
    # whatever the schedule, alpha(0) < 1 included). geometric(1,20) has alpha(0) = exp(-1): a third
    # of the mass sits in the reconstruction term.
    lo, hi = VOCAB.range(Modality.TEXT)
    exact = math.log(hi - lo)
    data = {k: jnp.asarray(v) for k, v in text_batch(2048, 256).items()}
    in_text = (jnp.arange(VOCAB.size) >= lo) & (jnp.arange(VOCAB.size) < hi)

    def uniform(noisy, batch):
        return jnp.broadcast_to(jnp.where(in_text, 0.0, -1e9), noisy.shape + (VOCAB.size,))

    @jax.jit
    def nelbo_per_token(rng):
        loss, _ = mdm_loss(uniform, data, rng, vocab=VOCAB, schedules=uniform_schedules(name), t_min=t_min)
        return loss

    # 16 batches of 2048 x 256 put 4 SE below 0.4% of log V: the 1% a missing reconstruction term
    # costs geometric(0.01,20) shows.
    mean, se = mean_and_se([nelbo_per_token(jax.random.key(seed)) for seed in range(16)])
    assert se < 1e-3 * exact
    assert abs(mean - exact) < 4 * se, (name, mean, exact, se)


def coupled_denoiser(noisy, batch):
    """Text -log p = 0.5 + (fraction of image positions masked), image -log p = 0.5 + (fraction of text masked)."""
    is_mask = noisy == VOCAB.mask_id
    text, image = batch["modality"] == Modality.TEXT, batch["modality"] == Modality.IMAGE
    frac_text = jnp.sum(is_mask & text, axis=1, keepdims=True) / jnp.sum(text, axis=1, keepdims=True)
    frac_image = jnp.sum(is_mask & image, axis=1, keepdims=True) / jnp.sum(image, axis=1, keepdims=True)
    return logits_with_nll(jnp.where(text, 0.5 + frac_image, 0.5 + frac_text), batch)


def half_text_half_image(batch, length):
    data = text_batch(batch, length)
    data["modality"][:, length // 2 :] = int(Modality.IMAGE)
    data["tokens"][:, length // 2 :] = IMAGE_LO + 3
    return {k: jnp.asarray(v) for k, v in data.items()}


@pytest.mark.parametrize("name", ["polynomial(3)", "geometric(0.01,20)"])
def test_anti_masking_is_unbiased_with_one_schedule_for_a_coupled_denoiser(name):
    # With one schedule the complement row is a forward-process state (rate alpha(t)), so both estimators
    # have the same mean even when one modality's predictions depend on the other's masking.
    data = half_text_half_image(4096, 8)

    def estimate(anti_masking):
        fn = jax.jit(lambda k: mdm_loss(coupled_denoiser, data, k, vocab=VOCAB, schedules=uniform_schedules(name),
                                        t_min=1e-5, anti_masking=anti_masking)[1])
        return mean_and_se([float(m["nelbo_sum"] / data["tokens"].shape[0]) for m in map(fn, map(jax.random.key, range(12)))])

    (plain, se_plain), (paired, se_paired) = estimate(False), estimate(True)
    assert abs(plain - paired) < 4 * math.hypot(se_plain, se_paired), (plain, paired, se_plain, se_paired)


def test_anti_masking_with_per_modality_schedules_is_refused():
    # Text linear + image polynomial(3): the complement row masks text with probability alpha_text(t) =
    # 1 - t and images with alpha_image(t) = 1 - t^3, a pair of rates no single time gives, so the
    # pair is no ELBO sample (the bias shows for a coupled denoiser). Refused by the loss and the config.
    from mdiff.config import ConfigError, validate
    from mdiff.defaults import base_config

    schedules = {Modality.TEXT: get_schedule("linear"), Modality.IMAGE: get_schedule("polynomial(3)"),
                 Modality.AUDIO: get_schedule("linear")}
    with pytest.raises(ValueError, match="one schedule for every modality"):
        mdm_loss(coupled_denoiser, half_text_half_image(4, 8), jax.random.key(0), vocab=VOCAB, schedules=schedules,
                 anti_masking=True)
    cfg = base_config()
    cfg.diffusion.anti_masking = True
    cfg.diffusion.schedule.image = "polynomial(3)"
    with pytest.raises(ConfigError, match="diffusion.anti_masking=True: anti-masking needs one schedule"):
        validate(cfg)
    cfg.diffusion.schedule.image = "linear"
    validate(cfg)
