"""The optimiser: SDE reparameterisation, schedules, CompleteP multipliers, AdamW updates.

References are the closed forms of the SDE reparameterisation (mdiff.optim.sde's docstring), a table of
numbers worked by hand from them, and hand-written Adam first steps.
"""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiff.config import ConfigError, validate
from mdiff.defaults import base_config
from mdiff.optim import completep, sde
from mdiff.optim.adamw import hyperparameters, make_optimizer
from mdiff.optim.schedule import host_lr, lr_factor


def _config(**over):
    c = base_config()
    for key, value in over.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


# ---------------------------------------------------------------------------------------------
# SDE reparameterisation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "batch, tokens, kappa, lr_x, b2_099, b2_0999, eps_x",
    [
        # numbers worked by hand from the closed form (gamma 0.44, base 256 sequences, 13B tokens)
        (1024, 13e9, 4.0, 2.0, 0.9606, 0.99601, 0.5),
        (256, 52e9, 0.543, 0.737, 0.9946, 0.99946, 1.36),
    ],
)
def test_worked_table(batch, tokens, kappa, lr_x, b2_099, b2_0999, eps_x):
    k = sde.kappa(batch * 1024, tokens, 256 * 1024, 13e9, 0.44)  # batches in tokens per step
    assert k == pytest.approx(kappa, abs=6e-4)
    hp = sde.scaled_hyperparameters(k, lr=1.0, b1=0.9, b2=0.99, eps=1.0, weight_decay=1.0, weight_decay_scaling="sqrt")
    assert hp["lr"] == pytest.approx(lr_x, abs=6e-4)
    assert hp["b2"] == pytest.approx(b2_099, abs=6e-5)
    assert sde.scaled_hyperparameters(k, lr=1, b1=0.9, b2=0.999, eps=1, weight_decay=1, weight_decay_scaling="none")[
        "b2"
    ] == pytest.approx(b2_0999, abs=6e-6)
    assert hp["eps"] == pytest.approx(eps_x, abs=6e-3)
    assert hp["weight_decay"] == pytest.approx(math.sqrt(k))


def test_weight_decay_scalings():
    k = 3.0
    common = dict(lr=1.0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)
    assert sde.scaled_hyperparameters(k, **common, weight_decay_scaling="sqrt")["weight_decay"] == pytest.approx(0.1 * 3**0.5)
    assert sde.scaled_hyperparameters(k, **common, weight_decay_scaling="linear")["weight_decay"] == pytest.approx(0.3)
    assert sde.scaled_hyperparameters(k, **common, weight_decay_scaling="none")["weight_decay"] == pytest.approx(0.1)


def test_plan_derives_steps_and_logical_batch():
    c = _config(train__batch=64, train__tokens=64 * 128 * 500 + 77, optim__batch_base=16, optim__tokens_base=10**6)
    p = sde.plan(c)
    assert p.steps == 500 and p.tokens == 64 * 128 * 500
    d = 64 * 128 * 500 + 77
    expected_kappa = (1e6 / d) ** 0.44 * (64 / 16)
    assert p.kappa == pytest.approx(expected_kappa)
    assert p.lr == pytest.approx(c.optim.lr * expected_kappa**0.5)
    assert p.b1 == pytest.approx(0.9**expected_kappa)
    assert p.eps == pytest.approx(1e-8 / expected_kappa**0.5)
    # The logical batch is where the base values apply unchanged at this horizon.
    assert p.batch_logical == pytest.approx(16 * (d / 1e6) ** 0.44)


def test_plan_naive_keeps_base_values():
    c = _config(optim__reparameterise=False, train__batch=64)
    p = sde.plan(c)
    assert (p.kappa, p.lr, p.b1, p.b2, p.eps) == (1.0, c.optim.lr, c.optim.b1, c.optim.b2, c.optim.eps)
    assert p.batch_logical == 64


def test_below_critical_warns(caplog):
    c = _config(train__batch=32, train__tokens=32 * 128 * 20, optim__steps_critical=100)
    p = sde.plan(c)
    assert p.steps == 20 and p.below_critical
    with caplog.at_level(logging.WARNING):
        sde.log_plan(p)
    assert "S_crit" in caplog.text and "20 steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sde.log_plan(sde.plan(_config(optim__steps_critical=10)))
    assert "S_crit" not in caplog.text


def test_horizon_shorter_than_one_step_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"train.tokens=1000: shorter than one step .* 4096"):
        sde.num_steps(1000, 32, 128)
    with pytest.raises(ConfigError, match="shorter than one step"):
        validate(_config(train__tokens=100))


@pytest.mark.parametrize(
    "fraction, tokens, cap, expected",
    [
        (0.25, 0, 1000, 100),  # 25% of 400 steps
        (0.25, 0, 50, 50),  # absolute cap
        (0.25, 4096 * 10, 0, 10),  # 10 steps' worth of tokens, under the 25% cap
        (0.01, 4096 * 10, 0, 4),  # tokens capped by 1% of the run
        (0.0, 4096 * 10 + 1, 0, 11),  # tokens alone, rounded up
    ],
)
def test_warmup_steps(fraction, tokens, cap, expected):
    c = _config(optim__warmup=fraction, optim__warmup_tokens=tokens, optim__warmup_steps_max=cap)
    assert sde.warmup_steps(400, 32, 128, c.optim) == expected


def test_pilot_warmup_rule():
    """Pilot: 1k-step warm-up capped at 25% of steps."""
    c = _config(optim__warmup=0.25, optim__warmup_steps_max=1000)
    assert sde.warmup_steps(100_000, 256, 128, c.optim) == 1000
    assert sde.warmup_steps(2000, 256, 128, c.optim) == 500


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------
def test_schedule_shapes():
    kw = dict(steps=110, warmup_steps=10, final_fraction=0.1)
    cos = lambda s: float(lr_factor(s, kind="cosine", **kw, xp=np))  # noqa: E731
    assert cos(0) == pytest.approx(0.1) and cos(4) == pytest.approx(0.5) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(109) == pytest.approx(0.1)
    # midpoint of the decay: (1 + f) / 2
    assert float(lr_factor(10 + 99 / 2, kind="cosine", **kw, xp=np)) == pytest.approx(0.55)
    assert float(lr_factor(109, kind="linear", **kw, xp=np)) == pytest.approx(0.1)
    assert float(lr_factor(10 + 99 / 2, kind="linear", **kw, xp=np)) == pytest.approx(0.55)
    assert float(lr_factor(109, kind="constant", **kw, xp=np)) == 1.0
    # The train step passes the horizon and warm-up as data (traced), with and without a warm-up.
    traced = jax.jit(lambda s, n, w: lr_factor(s, steps=n, warmup_steps=w, kind="cosine", final_fraction=0.1))
    assert float(traced(0, 110.0, 10.0)) == pytest.approx(0.1) and float(traced(4, 110.0, 10.0)) == pytest.approx(0.5)
    assert float(traced(109, 110.0, 10.0)) == pytest.approx(0.1)
    assert float(traced(0, 50.0, 0.0)) == pytest.approx(1.0) and float(traced(49, 50.0, 0.0)) == pytest.approx(0.1)
    steps = np.arange(110)
    for kind in ("cosine", "linear", "constant"):
        np.testing.assert_allclose(
            np.asarray(lr_factor(jnp.asarray(steps), kind=kind, **kw)), lr_factor(steps, kind=kind, **kw, xp=np), rtol=1e-6
        )


def test_schedule_same_in_tokens_for_two_batches():
    """The curve is defined over the run's fraction, so two batches trace the same lr per token."""
    c1 = _config(train__batch=32, train__tokens=32 * 128 * 400, optim__reparameterise=False, optim__warmup_steps_max=0)
    c2 = _config(train__batch=64, train__tokens=32 * 128 * 400, optim__reparameterise=False, optim__warmup_steps_max=0)
    p1, p2 = sde.plan(c1), sde.plan(c2)
    for s2 in (0, 50, 100, 199):
        assert host_lr(p2, "cosine", 0.1, s2) == pytest.approx(host_lr(p1, "cosine", 0.1, 2 * s2 + 1), rel=0.02, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# CompleteP
# ---------------------------------------------------------------------------------------------
def test_classify():
    assert completep.classify("embed/embedding", 2) == "embedding"
    assert completep.classify("modality_embed/embedding", 2) == "embedding"
    assert completep.classify("head/kernel", 2) == "output"
    assert completep.classify("blocks/0/attn/q/kernel", 2) == "hidden"
    assert completep.classify("blocks/0/norm/scale", 1) == "vector"
    assert completep.classify("blocks/stacked/attn_norm", 2) == "vector"  # scanned layers: [depth, width]


def test_class_multipliers_closed_forms():
    m_n, m_l, a = 4.0, 2.0, 0.5
    m = completep.class_multipliers(m_n, m_l, a, True)
    assert m["hidden"].lr == pytest.approx(2.0**-0.5 / 4.0)
    assert m["hidden"].eps == pytest.approx(1 / (4.0 * 2.0**0.5))
    # lambda: x m_N for the lr-coupled form (the paper's table); the decoupled form keeps the per-step
    # shrink lr * lambda of the coupled one, (2^-0.5 / 4) * 4 = 2^-0.5.
    assert m["hidden"].lambda_multiplier(decoupled=False) == pytest.approx(4.0)
    assert m["hidden"].lambda_multiplier(decoupled=True) == pytest.approx(2.0**-0.5)
    assert m["output"] == m["hidden"]
    assert (m["embedding"].lr, m["embedding"].eps) == (1.0, 0.25)
    assert m["embedding"].lambda_multiplier(False) == m["embedding"].lambda_multiplier(True) == 1.0
    assert m["vector"].lambda_multiplier(False) == m["vector"].lambda_multiplier(True) == 0.0
    assert completep.residual_multiplier(m_l, a, True) == pytest.approx(2.0**-0.5)
    # Off, or at the base shape: every multiplier is 1 (vectors still never decay).
    for mults in (completep.class_multipliers(m_n, m_l, a, False), completep.class_multipliers(1.0, 1.0, a, True)):
        for name in ("hidden", "output", "embedding"):
            assert (mults[name].lr, mults[name].eps, mults[name].lambda_multiplier(False), mults[name].lambda_multiplier(True)) == (1.0,) * 4
    assert completep.residual_multiplier(m_l, a, False) == 1.0


# ---------------------------------------------------------------------------------------------
# AdamW updates against a hand-written first step
# ---------------------------------------------------------------------------------------------
def _toy_params():
    rng = np.random.default_rng(0)
    return {
        "embed": {"embedding": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)},
        "block": {"mlp": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}, "norm": {"scale": jnp.ones(4)}},
        "head": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)},
    }


@pytest.mark.parametrize("as_data", [False, True])
@pytest.mark.parametrize("completep_on, scaling", [(False, "sqrt"), (True, "sqrt"), (True, "linear")])
def test_first_adamw_step_matches_hand_computation(completep_on, scaling, as_data):
    """as_data: the rule is built from one config's plan, and another config's values (lr, eps, weight decay)
    are passed as traced arguments, as the train step does; the update must follow the values passed."""
    c = _config(
        optim__completep=completep_on,
        optim__weight_decay_scaling=scaling,
        optim__width_base=2,
        optim__depth_base=1,
        optim__depth_alpha=0.5,
        optim__clip=0.0,
        optim__warmup=0.0,
        optim__warmup_steps_max=0,
        optim__eps=1e-3,  # big enough that a wrong multiplier shows
    )
    p = sde.plan(c)
    params = _toy_params()
    grads = jax.tree.map(lambda x: 0.1 * x + 0.05, params)
    tx = make_optimizer(c.optim, p, params, model_width=4, model_depth=4)
    if as_data:
        with c.unlocked():
            c.optim.lr, c.optim.eps, c.optim.weight_decay = 3 * c.optim.lr, 4e-3, 0.05
        values = hyperparameters(sde.plan(c))

        @jax.jit
        def update(hp, grads, params):
            rule = make_optimizer(c.optim, p, params, model_width=4, model_depth=4, hp=hp)
            return rule.update(grads, rule.init(params), params)[0]

        updates, p = update(values, grads, params), sde.plan(c)
    else:
        updates, _ = tx.update(grads, tx.init(params), params)
    # The rule's table at m_N = 4/2 = 2, m_L = 4/1 = 4, alpha = 1/2, written out by hand:
    # (lr, eps, lambda coupled, lambda decoupled) multipliers per class.
    m_n, m_l = 2.0, 4.0
    matrix = (m_l**-0.5 / m_n, 1 / (m_n * m_l**0.5), m_n, m_l**-0.5)
    rule = {"hidden": matrix, "output": matrix, "embedding": (1.0, 1 / m_n, 1.0, 1.0), "vector": (1.0, 1.0, 0.0, 0.0)}
    if not completep_on:
        rule = {k: (1.0, 1.0, v[2] and 1.0, v[3] and 1.0) for k, v in rule.items()}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        name = completep.path_name(path)
        lr_m, eps_m, lam_coupled, lam_decoupled = rule[completep.classify(name, g.ndim)]
        x = np.asarray(_get(params, path))
        lr = p.lr * lr_m  # schedule factor is 1 at step 0 without warm-up
        adam = np.asarray(g) / (np.abs(np.asarray(g)) + p.eps * eps_m)
        # coupled: u = -lr (adam + lambda w); decoupled: u = -lr adam - lambda w (per-step shrink lambda)
        shrink = p.weight_decay * lam_decoupled if p.decoupled_decay else lr * p.weight_decay * lam_coupled
        expected = -lr * adam - shrink * x
        np.testing.assert_allclose(np.asarray(_get(updates, path)), expected, rtol=2e-5, atol=1e-9, err_msg=name)


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_gradient_clipping():
    c = _config(optim__clip=0.5, optim__warmup=0.0, optim__warmup_steps_max=0, optim__weight_decay=0.0)
    p = sde.plan(c)
    params = _toy_params()
    tx = make_optimizer(c.optim, p, params, model_width=256, model_depth=4)
    big = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
    small = jax.tree.map(lambda x: 0.5 * x / jnp.sqrt(sum(jnp.sum(y**2) for y in jax.tree.leaves(big))), big)
    # Adam's first step is sign-like, so compare the clipped state: first moment = (1 - b1) * clipped grad.
    state_big = tx.update(big, tx.init(params), params)[1]
    state_small = tx.update(small, tx.init(params), params)[1]
    for a, b in zip(jax.tree.leaves(state_big), jax.tree.leaves(state_small)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_optim_validation_errors():
    for key, value, match in [
        ("schedule", "exp", "allowed: cosine"),
        ("depth_alpha", 0.2, "CompleteP"),
        ("gamma", 0.0, "must be > 0"),
        ("final_lr_fraction", 2.0, r"\[0, 1\]"),
    ]:
        c = base_config()
        c.optim[key] = value
        with pytest.raises(ConfigError, match=f"optim.{key}=.*{match}"):
            validate(c)


def test_base_point_is_in_tokens_per_step():
    # large.py's 3b (1024 x 2048 tokens per step, 6.4T tokens) on the pilot's base point (256 x 1024,
    # 13B): kappa = (13e9 / 6.4e12)^0.44 * (1024 * 2048) / (256 * 1024) = 0.06537 * 8 = 0.5230 (by hand;
    # counting sequences instead would give half, and lr off by sqrt 2).
    from mdiff.config import load_config

    p = sde.plan(load_config("experiments/large.py:3b"))
    assert p.batch_tokens == 1024 * 2048 and p.batch_tokens_base == 256 * 1024
    assert p.kappa == pytest.approx(0.5230, abs=5e-4)
    assert p.lr == pytest.approx(load_config("experiments/large.py:3b").optim.lr * 0.5230**0.5, rel=1e-3)
    # The same horizon and tokens per step as sequences of another length give the same kappa.
    a = sde.plan(_config(train__batch=64, data__seq_len=64, optim__batch_base=16, optim__seq_len_base=128))
    b = sde.plan(_config(train__batch=32, data__seq_len=128, optim__batch_base=16, optim__seq_len_base=128))
    assert a.kappa == pytest.approx(b.kappa) and a.kappa == pytest.approx(b.kappa)
    units = p.to_dict()["units"]
    assert units["batch_tokens_base"] == "tokens per step" and units["batch"] == "sequences per step"


def test_batch_study_warmups_are_the_same_in_tokens():
    # Every point of the CPU batch study warms up over the same tokens (to within one step's tokens, as
    # steps are whole), not the same steps: the largest batch's warm-up is not 16x the smallest's.
    import pathlib

    from mdiff.config import apply_overrides, import_python_file, load_config

    sweep_file = pathlib.Path(__file__).resolve().parent.parent / "sweeps" / "batch.py"
    module = import_python_file(sweep_file, prefix="_test_batch_sweep_")
    for tokens in (25, 100):
        warm = {}
        for batch in (4, 16, 64):
            c = load_config("experiments/quickstart.py:cpu-xs")
            with c.unlocked():
                apply_overrides(c, {**module.CPU_COMMON, "train.batch": batch, "train.tokens": tokens * module.CPU_STEP_TOKENS})
            p = sde.plan(c)
            warm[batch] = (p.warmup_tokens, p.batch_tokens)
        want = module.CPU_COMMON["optim.warmup_tokens"]
        for batch, (got, step_tokens) in warm.items():
            assert want <= got < want + step_tokens, (batch, got, want)
