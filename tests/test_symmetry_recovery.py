"""Recovery of KNOWN symmetry distributions.

Fast (default set): the flow alone, trained by maximum likelihood on exact prototypes (canonical shapes) and the
eta that was applied: hearts rotated U(+-60 deg), ellipses U(+-30 deg), both shifted U(+-0.15 * s_c); squares not
transformed at all. p(eta | prototype) must match each class's distribution (Wasserstein-1 against the uniform) and
put (almost) no spread on the squares' rotation.

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


def test_flow_recovers_known_per_class_distributions_from_exact_prototypes():
    fam = Family("affine")
    bounds = Bounds.create(fam, (0.5, 0.5, math.pi, 0.5, 0.5))
    shapes = [D.render_shape(name, 12, 0.5, 0.5, 1.6, 0.0) for name in ("heart", "ellipse", "square")]
    protos = jnp.asarray(np.stack(shapes)[..., None] * 2 - 1)
    flow = ConditionalFlow((12, 12, 1), bounds, hidden=(32,), num_flows=4, num_bins=8, conditioner_hidden=(32,),
                           dropout=0.0, conditioner_dropout=0.0, rngs=nnx.Rngs(0))
    graph, params = nnx.split(flow, nnx.Param)
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, 1000, 0.05))
    opt = tx.init(params)
    hw = jnp.asarray(HALF)
    scale = jnp.asarray(CLASS_SCALE)

    @jax.jit
    def step(params, opt, key):
        k1, k2 = jax.random.split(key)
        cls = jax.random.randint(k1, (256,), 0, 3)
        eta = jax.random.uniform(k2, (256, 5), minval=-1, maxval=1) * hw * scale[cls][:, None]
        loss, grads = jax.value_and_grad(lambda p: -jnp.mean(nnx.merge(graph, p).log_prob(eta, protos[cls])))(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    for i in range(1000):
        params, opt, loss = step(params, opt, jax.random.key(i))
    samples = np.asarray(jax.jit(lambda p: nnx.merge(graph, p).sample(jax.random.key(7), protos, 4000))(params))
    w1 = np.array([[uniform_w1(samples[:, c, d], HALF[d] * s) for d in range(5)] for c, s in enumerate(CLASS_SCALE)])
    print("W1 per class (heart, ellipse, square) x eta dim:", np.round(w1, 4).tolist())
    bound = 0.1 * np.outer(CLASS_SCALE, HALF) + 0.01  # 10% of each range's half-width, +0.01 for point masses
    assert np.all(w1 < bound), f"W1 per class x eta dim:\n{np.round(w1, 4)}\nbounds:\n{np.round(bound, 4)}"
    rot_square = np.degrees(samples[:, 2, ROT].std())
    assert rot_square < 0.5, rot_square  # the square is never rotated: the flow learns (almost) no rotation


def _run(variant, tmp_path, overrides=()):
    config = load_config(f"experiments/symmetry_dsprites.py:{variant}", ["--config.train.progress=False", *overrides])
    return train_and_evaluate(config, tmp_path / variant)


def test_sgm_recovers_known_rotation_and_shift(tmp_path):
    """Full two-stage SGM on rotated/shifted canonical hearts (+-60 deg) and ellipses (+-30 deg)."""
    s = _run("known", tmp_path)
    report = {k: round(v, 4) for k, v in s.items() if k.startswith("recovery/class")}
    for c in (0, 1):  # heart, ellipse
        for name in ("shift_x", "shift_y", "rotation"):
            assert s[f"recovery/class{c}/{name}/w1_rel"] < 0.15, report
        # the prototypes are invariant to the rotation: q's inferred rotation follows the known one
        assert 0.75 < s[f"recovery/class{c}/rotation/q_slope"] < 1.3, report


def test_sgm_learns_no_rotation_on_unrotated_data(tmp_path):
    s = _run("unrotated", tmp_path)
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
