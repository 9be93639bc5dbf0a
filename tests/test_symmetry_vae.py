"""The VAE combinations report proper bounds on the same pixel-space log-likelihood (mdiff/symmetry/vae.py).

Exact values come from 1-D quadrature over the latent (latent dimension 1), written here with numpy/scipy
independently of the module's own Gaussian code.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp
from scipy.stats import norm

from mdiff.symmetry import vae as V
from mdiff.symmetry.flow import ConditionalFlow
from mdiff.symmetry.nets import InferenceNet, inv_softplus
from mdiff.symmetry.transforms import Bounds, Family, inverse

FAM = Family("affine")
BOUNDS = Bounds.create(FAM, (0.25, 0.25, math.pi, 0.25, 0.25))
ETA0 = np.array([0.08, -0.05, 0.5, 0.2, -0.15], np.float32)  # shift, rotation (rad), anisotropic zoom
SHAPE = (8, 8, 1)


def tiny_vae(shape=SHAPE, pixel_sigma=0.5, seed=0) -> V.VAE:
    vae = V.VAE(shape, 1, (8,), rngs=nnx.Rngs(seed))
    vae.pixel_sigma_raw[...] = jnp.full_like(vae.pixel_sigma_raw[...], inv_softplus(pixel_sigma - 0.01))
    vae.prior_mu[...] = jnp.array([0.3])
    vae.prior_sigma_raw[...] = jnp.array([inv_softplus(1.2)])
    return vae


def fixed_eta_sgm(eta0: np.ndarray, spread: float) -> V.SGMParts:
    """q(eta | x) = p(eta | x_hat) = N(eta0, spread) in unconstrained units, independent of the images."""
    u0 = jnp.asarray(BOUNDS.to_unconstrained(jnp.asarray(eta0)))
    inf = InferenceNet(SHAPE, BOUNDS, hidden=(8,), sigma_init=spread, rngs=nnx.Rngs(1))
    inf.head.bias[...] = u0
    flow = ConditionalFlow(SHAPE, BOUNDS, hidden=(8,), num_flows=2, conditioner_hidden=(4,), dropout=0.0,
                           conditioner_dropout=0.0, rngs=nnx.Rngs(2))
    for head, bias in ((flow.base_mu, u0), (flow.base_sigma, jnp.full((5,), inv_softplus(spread - 1e-4)))):
        head.kernel[...] = jnp.zeros_like(head.kernel[...])
        head.bias[...] = bias
    return V.SGMParts(inf, flow, FAM, 3)


def random_sgm(seed: int = 3) -> V.SGMParts:
    """An untrained SGM with broad q(eta | x) (so the eta part of the weights matters)."""
    inf = InferenceNet(SHAPE, BOUNDS, hidden=(8,), sigma_init=0.3, rngs=nnx.Rngs(seed))
    flow = ConditionalFlow(SHAPE, BOUNDS, hidden=(8,), num_flows=2, conditioner_hidden=(4,), dropout=0.0,
                           conditioner_dropout=0.0, rngs=nnx.Rngs(seed + 1))
    return V.SGMParts(inf, flow, FAM, 3)


def model_samples(vae: V.VAE, n: int, seed: int, eta0=None) -> np.ndarray:
    """x from the generative model: z ~ p(z), mean = decoder (warped by T_eta0), x = mean + sigma * noise."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    sigma = jax.nn.softplus(vae.prior_sigma_raw[...])
    z = vae.prior_mu[...] + sigma * jax.random.normal(k1, (n, 1))
    mean = vae.decode(z).reshape(n, *vae.image_shape)
    if eta0 is not None:
        mean = FAM.apply(mean, FAM.transform(jnp.broadcast_to(jnp.asarray(eta0), (n, 5))), order=3)
    return np.asarray(mean + vae.pixel_sigma().reshape(vae.image_shape) * jax.random.normal(k2, mean.shape))


def exact_log_lik(vae: V.VAE, x: np.ndarray, mean_fn, points: int = 8001) -> np.ndarray:
    """log of the integral over z of p(z) prod_i N(x_i; mean_fn(z)_i, sigma_i^2), by the trapezoid rule."""
    mu = float(vae.prior_mu[...][0])
    sd = float(jax.nn.softplus(vae.prior_sigma_raw[...])[0])
    z = np.linspace(mu - 10 * sd, mu + 10 * sd, points, dtype=np.float32)[:, None]
    means = np.asarray(mean_fn(jnp.asarray(z))).reshape(points, -1).astype(np.float64)
    sigma = np.asarray(vae.pixel_sigma(), np.float64)
    log_prior = norm.logpdf(z[:, 0].astype(np.float64), mu, sd)
    flat = x.reshape(len(x), -1).astype(np.float64)
    log_lik = norm.logpdf(flat[:, None, :], means[None], sigma).sum(-1)  # [N, points]
    return logsumexp(log_prior[None] + log_lik, axis=1) + math.log(float(z[1, 0] - z[0, 0]))


def bound(kind, vae, sgm, x, k, seeds=(0,)) -> np.ndarray:
    """IWLB per image, averaged over the given seeds (one compilation)."""
    fn = jax.jit(lambda xx, key: V.iwlb(V.log_weights(kind, vae, sgm, xx, key, k)))
    return np.mean([np.asarray(fn(jnp.asarray(x), jax.random.key(s))) for s in seeds], axis=0)


def test_vae_bound_is_below_the_exact_log_likelihood_and_reaches_it():
    vae = tiny_vae()
    x = model_samples(vae, 12, seed=5)
    exact = exact_log_lik(vae, x, vae.decode)
    one, many = bound("vae", vae, None, x, 1), bound("vae", vae, None, x, 4000)
    assert np.mean(one) < np.mean(exact) - 0.1  # K = 1 is a strictly loose bound here
    # E[IWLB] <= log p(x); one estimate may land a little above it, so the mean over images is checked
    assert np.mean(many) <= np.mean(exact) + 0.02
    np.testing.assert_allclose(many, exact, atol=0.15)


def test_prototype_vae_bound_is_a_pixel_space_log_likelihood():
    """With eta pinned at a non-trivial eta0 (shift, rotation, zoom), p(x) = int p(z) N(x; T_eta0(mu(z))) dz.

    The prototype-VAE's bound must approach that value from below; the paper's prototype-frame weight (the
    Gaussian on T_eta0^-1(x) without a Jacobian) does not, which shows this test can tell the two apart.
    """
    vae = tiny_vae()
    sgm = fixed_eta_sgm(ETA0, 1e-3)
    x = model_samples(vae, 12, seed=6, eta0=ETA0)
    t0 = lambda n: FAM.transform(jnp.broadcast_to(jnp.asarray(ETA0), (n, 5)))  # noqa: E731
    warped = lambda z: FAM.apply(vae.decode(z).reshape(len(z), *SHAPE), t0(len(z)), order=3)  # noqa: E731
    exact = exact_log_lik(vae, x, warped)
    one, many = bound("protovae", vae, sgm, x, 1), bound("protovae", vae, sgm, x, 4000)
    assert np.mean(one) < np.mean(exact) - 0.1
    # E[IWLB] <= log p(x); one estimate may land a little above it, so the mean over images is checked
    assert np.mean(many) <= np.mean(exact) + 0.02
    np.testing.assert_allclose(many, exact, atol=0.15)
    proto_frame = exact_log_lik(vae, np.asarray(FAM.apply(jnp.asarray(x), inverse(t0(len(x))), order=3)), vae.decode)
    assert np.mean(np.abs(proto_frame - exact)) > 2.0


def test_prototype_weight_equals_the_papers_when_the_warp_permutes_pixels():
    """A 90-degree rotation of a square image permutes pixels (the bicubic kernel is exact at pixel centres),
    and with one sigma for all pixels, N(x; T(mu), sigma) = N(T^-1 x; mu, sigma): then our observation term is the
    paper's. (p(eta | x_hat) here ignores x_hat, so conditioning it on mu(z) or on T^-1 x does not matter.)"""
    vae = tiny_vae()
    quarter = np.array([0, 0, math.pi / 2, 0, 0], np.float32)
    sgm = fixed_eta_sgm(quarter, 1.05e-4)  # (nearly) exactly 90 degrees: the flow's sigma floor is 1e-4
    x = jnp.asarray(model_samples(vae, 6, seed=7, eta0=quarter))
    key = jax.random.key(4)
    ours = V.prototype_log_weights(vae, sgm, x, key, 3)

    def papers(key_s):  # the paper's weight with the same random numbers
        k1, k2 = jax.random.split(key_s)
        eta, log_q_eta = sgm.inf.sample_with_log_prob(k1, x)
        x_hat = FAM.apply(x, inverse(FAM.transform(eta)), order=3)
        z, log_q_z = vae.sample_posterior(x_hat, k2, 1)
        log_lik = V.pixel_log_lik(x_hat, vae.decode(z[0]), vae.pixel_sigma())
        proto = vae.decode(z[0]).reshape(x.shape)
        return vae.log_prior(z[0]) + sgm.flow.log_prob(eta, proto) + log_lik - log_q_eta - log_q_z[0]

    theirs = jax.lax.map(papers, jax.random.split(key, 3))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=0.02)


@pytest.mark.parametrize("kind", ["vae", "protovae"])
def test_importance_weighted_bound_increases_with_samples_on_average(kind):
    vae = tiny_vae(pixel_sigma=0.3)
    sgm = random_sgm()
    x = model_samples(vae, 32, seed=8, eta0=ETA0 * 0.5)
    means = [bound(kind, vae, sgm, x, k, seeds=range(4)).mean() for k in (1, 8, 64)]
    assert means[0] < means[1] < means[2], means


def test_every_row_scores_the_same_test_pixels(monkeypatch):
    """The observation term of every kind sees the test images themselves (not prototypes or augmentations)."""
    seen: dict[str, list] = {}
    real = V.pixel_log_lik
    current = {}

    def recording(x, mean, sigma):  # a host callback sees the concrete pixels even inside jit / lax.map
        kind = current["kind"]
        jax.debug.callback(lambda v: seen.setdefault(kind, []).append(np.asarray(v)), x)
        return real(x, mean, sigma)

    monkeypatch.setattr(V, "pixel_log_lik", recording)
    images = model_samples(tiny_vae(), 4, seed=9, eta0=ETA0)
    sgm = random_sgm()
    for kind in V.KINDS:
        current["kind"] = kind
        values = V.score_images(kind, tiny_vae(), sgm, images, 2, seed=0, chunk=4)
        assert values.shape == (4,) and np.all(np.isfinite(values))
    jax.effects_barrier()
    assert set(seen) == set(V.KINDS)
    for kind, calls in seen.items():
        for x in calls:
            np.testing.assert_array_equal(x.reshape(images.shape), images, err_msg=kind)


def test_unknown_kind_and_missing_sgm_are_clear_errors():
    vae = tiny_vae()
    x = jnp.zeros((2, *SHAPE))
    with pytest.raises(ValueError, match="known are"):
        V.log_weights("gan", vae, None, x, jax.random.key(0), 2)
    with pytest.raises(ValueError, match="needs the trained SGM"):
        V.log_weights("protovae", vae, None, x, jax.random.key(0), 2)


def test_early_stopping_keeps_the_best_and_stops_after_patience_checks():
    stopper = V.EarlyStopping(patience=3)
    values = [1.0, 3.0, 2.0, 2.5, 3.0, 0.0]  # 3.0 again is not an improvement
    stops = [stopper.update(v, 10 * (i + 1), f"params{i}") for i, v in enumerate(values)]
    assert stops == [False, False, False, False, True, True]
    assert (stopper.best, stopper.best_step, stopper.best_params) == (3.0, 20, "params1")
    never = V.EarlyStopping(patience=0)
    assert not any(never.update(-float(i), i, None) for i in range(50)) and never.best == 0.0


def test_invvae_weight_equals_the_prototype_weight_when_the_warp_permutes_pixels():
    """The paper's InvVAE weight puts the Gaussian on T^-1(x) and conditions p(eta | x_hat) on the inferred
    prototype. With a 90-degree rotation (a pixel permutation), one sigma for all pixels and a flow that ignores
    its conditioning (zero-initialised conditioners and base heads), N(T^-1 x; mu, sigma) = N(x; T(mu), sigma),
    so it must equal the prototype-VAE's pixel-space weight drawn with the same random numbers."""
    vae = tiny_vae()
    quarter = np.array([0, 0, math.pi / 2, 0, 0], np.float32)
    sgm = fixed_eta_sgm(quarter, 1.05e-4)
    x = jnp.asarray(model_samples(vae, 6, seed=7, eta0=quarter))
    key = jax.random.key(5)
    ours = V.log_weights("protovae", vae, sgm, x, key, 3)
    theirs = V.log_weights("invvae", vae, sgm, x, key, 3)
    np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=1e-5, atol=0.02)
    values = V.score_images("invvae", vae, sgm, np.asarray(x), 4, seed=0, chunk=4)
    assert values.shape == (6,) and np.all(np.isfinite(values))
