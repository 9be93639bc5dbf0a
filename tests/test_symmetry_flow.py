"""The conditional spline flow: spline bijection, identity at init, normalisation, change of variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdiff.symmetry.flow import ConditionalFlow, rq_spline
from mdiff.symmetry.transforms import Bounds


def _perturb(flow: ConditionalFlow, seed: int, scale: float = 0.3) -> ConditionalFlow:
    """Give the zero-initialised conditioner outputs random weights, so the flow is far from the identity."""
    key = jax.random.key(seed)
    for layer in flow.layers:
        for var in (layer.out.kernel, layer.out.bias):
            key, sub = jax.random.split(key)
            var.value = var.value + scale * jax.random.normal(sub, var.value.shape)
    return flow


def log_prob_fn(flow: ConditionalFlow):
    graph, state = nnx.split(flow)
    return jax.jit(lambda eta, x: nnx.merge(graph, state).log_prob(eta, x))


def make_flow(dim: int, squash: bool, seed: int = 0, num_flows: int = 3):
    bounds = Bounds(scale=(2.0,) * dim, offset=(0.5,) * dim, squash=squash)
    flow = ConditionalFlow((4, 4, 1), bounds, hidden=(16, 8), num_flows=num_flows, num_bins=5, spline_range=3.0,
                           conditioner_hidden=(16,), rngs=nnx.Rngs(seed))
    return flow, jax.random.normal(jax.random.key(seed + 1), (1, 4, 4, 1))


def test_spline_inverse_log_det_and_identity():
    raw = jax.random.normal(jax.random.key(0), (400, 3 * 6 - 1))  # moderate: extreme bins are ill-conditioned in f32
    rq_spline_j = jax.jit(rq_spline, static_argnums=(2, 3, 4))
    x = jnp.linspace(-4, 4, 400)
    y, ld = rq_spline_j(x, raw, 6, 3.0)
    x_back, ld_inv = rq_spline_j(y, raw, 6, 3.0, True)
    np.testing.assert_allclose(x_back, x, atol=1e-3)  # float32 quadratic solve
    np.testing.assert_allclose(ld + ld_inv, 0, atol=1e-3)
    deriv = jax.jit(jax.vmap(jax.grad(lambda v, r: rq_spline(v, r, 6, 3.0)[0])))(x, raw)
    np.testing.assert_allclose(ld, jnp.log(deriv), atol=2e-4)
    y_same, _ = rq_spline_j(x, jnp.broadcast_to(raw[0], raw.shape), 6, 3.0)
    assert np.all(np.diff(np.asarray(y_same)) > 0)  # one spline is strictly increasing
    np.testing.assert_allclose(y[jnp.abs(x) > 3.0], x[jnp.abs(x) > 3.0])  # identity tails
    y0, ld0 = rq_spline_j(x, jnp.zeros_like(raw), 6, 3.0)  # zero parameters: the identity
    np.testing.assert_allclose(y0, x, atol=1e-5)
    np.testing.assert_allclose(ld0, 0, atol=1e-5)


def test_flow_starts_as_identity_on_its_base():
    flow, x_hat = make_flow(2, squash=False)
    graph, state = nnx.split(flow)

    @jax.jit
    def check(eta):
        f = nnx.merge(graph, state)
        mu, sigma = f.base_params(x_hat)
        u = (eta - 0.5) / 2.0
        base = jnp.sum(-0.5 * ((u - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi), -1)
        return f.log_prob(eta, x_hat), base - 2 * jnp.log(2.0)

    got, want = check(jnp.array([[0.3, -1.0]]))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("squash", [False, True])
def test_density_integrates_to_one_in_1d(squash):
    flow, x_hat = _perturb_pair(1, squash)
    lo, hi = (0.5 - 2.0, 0.5 + 2.0) if squash else (-40.0, 40.0)
    grid = jnp.linspace(lo, hi, 40001)[1:-1, None]
    p = jnp.exp(log_prob_fn(flow)(grid, jnp.broadcast_to(x_hat, (grid.shape[0], 4, 4, 1))))
    total = float(jnp.trapezoid(p, grid[:, 0]))
    assert abs(total - 1.0) < 5e-3, total


def test_density_integrates_to_one_in_2d():
    flow, x_hat = _perturb_pair(2, False)
    axis = jnp.linspace(-25, 25, 401)
    g1, g2 = jnp.meshgrid(axis, axis, indexing="ij")
    pts = jnp.stack([g1.ravel(), g2.ravel()], -1)
    p = jnp.exp(log_prob_fn(flow)(pts, jnp.broadcast_to(x_hat, (pts.shape[0], 4, 4, 1)))).reshape(g1.shape)
    total = float(jnp.trapezoid(jnp.trapezoid(p, axis, axis=1), axis))
    assert abs(total - 1.0) < 1e-2, total


def _perturb_pair(dim, squash):
    flow, x_hat = make_flow(dim, squash)
    return _perturb(flow, 5), x_hat


@pytest.mark.parametrize("squash", [False, True])
def test_log_prob_matches_change_of_variables_of_the_sampler(squash):
    flow, x_hat = _perturb_pair(2, squash)
    graph, state = nnx.split(flow)

    @jax.jit
    def check(z):
        f = nnx.merge(graph, state)
        mu, sigma = f.base_params(x_hat)
        eta = f.eta_from_base(z[None], x_hat)
        jac = jax.jacfwd(lambda v: f.eta_from_base(v[None], x_hat)[0])(z)
        log_base = jnp.sum(-0.5 * ((z - mu[0]) / sigma[0]) ** 2 - jnp.log(sigma[0]) - 0.5 * jnp.log(2 * jnp.pi))
        return f.log_prob(eta, x_hat)[0], log_base - jnp.log(jnp.abs(jnp.linalg.det(jac)))

    mu, sigma = flow.base_params(x_hat)
    for z in mu + sigma * jax.random.normal(jax.random.key(3), (5, 2)):
        got, expect = check(z)
        np.testing.assert_allclose(got, expect, atol=2e-3, rtol=1e-4)


def test_samples_respect_bounds_and_shapes():
    flow, x_hat = _perturb_pair(3, True)
    graph, state = nnx.split(flow)
    s = jax.jit(lambda x: nnx.merge(graph, state).sample(jax.random.key(0), x, n=500))(jnp.concatenate([x_hat, x_hat]))
    assert s.shape == (500, 2, 3)
    assert np.all(np.abs(np.asarray(s) - 0.5) <= 2.0 + 1e-5)
    assert np.all(np.isfinite(np.asarray(log_prob_fn(flow)(s[:, 0], jnp.broadcast_to(x_hat, (500, 4, 4, 1))))))


def test_dropout_changes_log_prob_only_with_a_key():
    bounds = Bounds(scale=(1.0, 1.0), offset=(0.0, 0.0), squash=False)
    flow = _perturb(ConditionalFlow((4, 4, 1), bounds, hidden=(16,), num_flows=2, num_bins=4,
                                    conditioner_hidden=(8,), dropout=0.5, conditioner_dropout=0.5,
                                    rngs=nnx.Rngs(0)), 1)
    x_hat = jnp.ones((1, 4, 4, 1))
    eta = jnp.array([[0.1, 0.2]])
    np.testing.assert_allclose(flow.log_prob(eta, x_hat), flow.log_prob(eta, x_hat))
    assert float(flow.log_prob(eta, x_hat, key=jax.random.key(1))[0]) != float(flow.log_prob(eta, x_hat)[0])
