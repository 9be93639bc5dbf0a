"""Recovery of KNOWN symmetry distributions.

Fast (default set): the flow alone, trained by maximum likelihood on exact prototypes (canonical shapes) and the
eta that was applied: hearts rotated U(+-60 deg), ellipses U(+-30 deg), both shifted U(+-0.15 * s_c); squares not
transformed at all. p(eta | prototype) must match each class's distribution (Wasserstein-1 against the uniform,
widened by the targets' small noise) and put no learned spread on the squares' rotation, for each of 3 seeds.

Also (about 70 s each on a quiet 2-core CPU): the whole two-stage SGM on experiments/symmetry_dsprites.py:known
(hearts and ellipses only) and :unrotated. Bound: per class and eta dimension, W1(learned, known) < 0.15 x the
known half-width. Before the augmentation-range schedule (train.aug_mult) the hearts' rotation was not learned at
all (q's rotation slope ~0 on the known rotation, learned spread ~1/6 of the true one).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mdiff.config import load_config
from mdiff.symmetry import data as D
from mdiff.symmetry import defaults  # noqa: F401
from mdiff.symmetry.flow import ConditionalFlow
from mdiff.symmetry.train import train_and_evaluate, uniform_w1
from mdiff.symmetry.transforms import Bounds, Family

ROT = 2  # eta index of the rotation
HALF = (0.15, 0.15, math.pi / 3, 0.0, 0.0)
CLASS_SCALE = (1.0, 0.5, 0.0)  # heart, ellipse, square


def test_uniform_w1_reference_values():
    rng = np.random.default_rng(0)
    assert uniform_w1(rng.uniform(-1, 1, 20000) + 3.0, 1.0) < 0.02  # centred first, so a shift does not count
    assert uniform_w1(np.zeros(100), 0.0) == 0.0
    assert uniform_w1(np.zeros(1000), 1.0) == pytest.approx(0.5, abs=1e-3)  # E|U(-1, 1)| = 1/2
    hue = np.mod(rng.uniform(-0.15, 0.15, 20000) + 0.95, 1.0)  # straddles the wrap-around point of the hue
    assert uniform_w1(hue, 0.15, period=1.0) < 0.005
    assert uniform_w1(hue, 0.15) > 0.2  # without the period it looks like two far-apart modes


FLOW_SEEDS = (0, 1, 2)
TARGET_NOISE = 0.01  # std of the targets' Gaussian noise in the flow's unit space (q's initial sigma)


def _train_flows_on_exact_prototypes(seeds, steps: int, batch: int = 256):
    """One flow per seed (vmapped, one compiled scan), trained by maximum likelihood on (prototype, eta) pairs.

    The targets are the known eta plus N(0, TARGET_NOISE) in the flow's unit space, as stage 2's targets are
    samples of q(eta | x) with its noise sigma. Without it the squares' eta and every class's log-scales are
    point masses: the likelihood is unbounded, training never converges (the gradient norm grows into the
    thousands while the loss falls without end) and whether the heart's rotation is learned depends on the
    rounding: seed 0 of the earlier plain-Adam recipe passed with the suite's 8 host devices but gave heart-rotation
    W1 0.77 without them on the same AMD CPU (0.577 on an Intel Xeon; the square then spread over 88 deg of
    rotation); other seeds gave 0.02-0.05. Gradient clipping alone (seeds 0-3) kept the runaway (W1 of the
    square's rotation 1.1-1.4 x its bound). With the noise and clipping (2.0, as the trainer's flow optimiser) the
    loss converges (to about -12.7, gradient norm falling to ~100) on every seed.
    """
    fam = Family("affine")
    bounds = Bounds.create(fam, (0.5, 0.5, math.pi, 0.5, 0.5))
    shapes = [D.render_shape(name, 12, 0.5, 0.5, 1.6, 0.0) for name in ("heart", "ellipse", "square")]
    protos = jnp.asarray(np.stack(shapes)[..., None] * 2 - 1)

    def make(seed):
        return ConditionalFlow((12, 12, 1), bounds, hidden=(32,), num_flows=4, num_bins=8, conditioner_hidden=(32,),
                               dropout=0.0, conditioner_dropout=0.0, rngs=nnx.Rngs(seed))

    graph, _ = nnx.split(make(0), nnx.Param)
    params = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.split(make(s), nnx.Param)[1] for s in seeds])
    tx = optax.chain(optax.clip_by_global_norm(2.0), optax.adam(optax.cosine_decay_schedule(3e-3, steps, 0.05)))
    hw, scale = jnp.asarray(HALF), jnp.asarray(CLASS_SCALE)
    noise = TARGET_NOISE * jnp.asarray(bounds.scale)

    def train_one(params, key):
        def body(carry, i):
            params, opt = carry
            k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
            cls = jax.random.randint(k1, (batch,), 0, 3)
            eta = jax.random.uniform(k2, (batch, 5), minval=-1, maxval=1) * hw * scale[cls][:, None]
            eta = eta + noise * jax.random.normal(k3, eta.shape)
            grads = jax.grad(lambda p: -jnp.mean(nnx.merge(graph, p).log_prob(eta, protos[cls])))(params)
            upd, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, upd), opt), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
        return nnx.merge(graph, params).sample(jax.random.fold_in(key, steps), protos, 4000)

    keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    samples = jax.jit(jax.vmap(lambda p, k: train_one(p, jax.random.wrap_key_data(k))))(params, keys)
    return np.asarray(samples), np.asarray(bounds.scale) * TARGET_NOISE


def _w1_to_reference(samples: np.ndarray, half_width: float, noise: float, rng: np.random.Generator) -> float:
    """W1 between median-centred samples and as many draws of U(-a, a) + N(0, noise^2) (sorted-sample coupling)."""
    ref = rng.uniform(-half_width, half_width, len(samples)) + noise * rng.normal(size=len(samples))
    return float(np.mean(np.abs(np.sort(samples - np.median(samples)) - np.sort(ref - np.median(ref)))))


def test_flow_recovers_known_per_class_distributions_from_exact_prototypes():
    """Every one of 3 seeds (600 steps each, one vmapped program) matches each class's known distribution.

    Bound per class and eta dimension: 10% of the half-width + 0.01. Measured (AMD EPYC, this test, seeds 0/1/2):
    heart rotation W1 0.022 / 0.011 / 0.043 rad (bound 0.115), ellipse rotation 0.021 / 0.021 / 0.035 (bound
    0.062), largest W1 / bound 0.56 (seed 2, ellipse rotation); a scratch run with other sampling keys gave heart
    rotation 0.027-0.051 and largest W1 / bound 0.46. About 5 min on the loaded 2-core machine (2.3 min of it
    compiling the scan), under a minute quiet.
    """
    samples, noise = _train_flows_on_exact_prototypes(FLOW_SEEDS, steps=600)
    rng = np.random.default_rng(0)
    bound = 0.1 * np.outer(CLASS_SCALE, HALF) + 0.01
    for seed, s in zip(FLOW_SEEDS, samples):
        w1 = np.array([[_w1_to_reference(s[:, c, d], HALF[d] * k, noise[d], rng) for d in range(5)]
                       for c, k in enumerate(CLASS_SCALE)])
        print(f"seed {seed}: W1 per class (heart, ellipse, square) x eta dim:", np.round(w1, 4).tolist())
        assert np.all(w1 < bound), f"seed {seed}, W1:\n{np.round(w1, 4)}\nbounds:\n{np.round(bound, 4)}"
        # the square is never rotated: its rotation spread is the targets' noise alone, not a learned range
        assert s[:, 2, ROT].std() < 1.5 * noise[ROT], (seed, np.degrees(s[:, 2, ROT].std()))


def _run(variant, tmp_path, overrides=()):
    config = load_config(f"experiments/symmetry_dsprites.py:{variant}", ["--config.train.progress=False", *overrides])
    return train_and_evaluate(config, tmp_path / variant)


# Every seed (those of `mdiff sweep run symmetry:recovery` / `:unrotated`, 3-6 CPU minutes each) is `-m slow`;
# the default run checks recovery with the flow on exact prototypes above. Three seeds, so a bound that only
# one seed meets is caught. Measured on `known`
# (seeds 0 / 1): largest W1 / half-width 0.086 / 0.077 (heart rotation), q rotation slopes 0.90 / 0.88 (heart)
# and 1.11 / 1.09 (ellipse); seed 2 and the `unrotated` seeds 1-2 pass too (about 345 s each, loaded machine).
SGM_SEEDS = [pytest.param(seed, marks=pytest.mark.slow) for seed in (0, 1, 2)]


@pytest.mark.parametrize("seed", SGM_SEEDS)
def test_sgm_recovers_known_rotation_and_shift(tmp_path, seed):
    """Full two-stage SGM on rotated/shifted canonical hearts (+-60 deg) and ellipses (+-30 deg)."""
    s = _run("known", tmp_path, [f"--config.seed={seed}"])
    report = {k: round(v, 4) for k, v in s.items() if k.startswith("recovery/class")}
    for c in (0, 1):  # heart, ellipse
        for name in ("shift_x", "shift_y", "rotation"):
            assert s[f"recovery/class{c}/{name}/w1_rel"] < 0.15, report
        # the prototypes are invariant to the rotation: q's inferred rotation follows the known one
        assert 0.75 < s[f"recovery/class{c}/rotation/q_slope"] < 1.3, report


@pytest.mark.parametrize("seed", SGM_SEEDS)
def test_sgm_learns_no_rotation_on_unrotated_data(tmp_path, seed):
    s = _run("unrotated", tmp_path, [f"--config.seed={seed}"])
    report = {k: round(v, 4) for k, v in s.items() if k.startswith("recovery/class")}
    for c in (0, 1):
        # W1 to a point mass, below 0.15 x the smallest rotation half-width of `known` (30 deg): 4.5 deg
        assert math.degrees(s[f"recovery/class{c}/rotation/w1"]) < 4.5, report
        for name in ("shift_x", "shift_y"):
            assert s[f"recovery/class{c}/{name}/w1_rel"] < 0.15, report


@pytest.mark.slow
def test_sgm_recovers_known_hue_on_emoji(tmp_path):
    """Colour: emoji recoloured by hue U(+-0.15 turn) and log-saturation U(+-0.3), value untouched (about 5 CPU
    minutes). Measured (seed 0): hue W1 0.0186 (0.12 x the half-width; q's hue slope median 0.94 over the 11 test
    classes), log-value W1 to a point mass 0.017. The log-saturation spread is over-estimated (W1 0.12 = 0.42 x the
    half-width, q's slope median 1.55: boosting saturation clips, so over-correcting still gives equal prototypes),
    so it is reported in BENCHMARKS.md, not asserted."""
    config = load_config("experiments/symmetry_emoji.py:quick", ["--config.train.progress=False"])
    s = train_and_evaluate(config, tmp_path / "emoji")
    assert s["recovery/hue/w1"] < 0.15 * 0.15, s
    assert s["recovery/log_value/w1"] < 0.03, s
