"""Transform algebra of the SGM: closed forms, composition, inversion, colour, bounds, bad input."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from mdiff.symmetry import transforms as T

AFFINE = T.Family("affine")


def blob(size=24, centre=(12.0, 9.0), width=2.5, channels=1):
    """A smooth Gaussian blob on a -1 background (interpolation is nearly exact on it)."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    g = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * width**2))
    img = (2 * g - 1).astype(np.float32)[..., None]
    return jnp.asarray(np.repeat(img, channels, axis=-1))


def centroid(img):
    w = np.asarray(img[..., 0]) + 1
    r, c = np.meshgrid(np.arange(w.shape[0]), np.arange(w.shape[1]), indexing="ij")
    return np.array([(w * r).sum() / w.sum(), (w * c).sum() / w.sum()])


def test_affine_closed_forms():
    a = 0.3
    rot = np.asarray(T.affine_matrix(jnp.array([0, 0, a, 0, 0.0])))
    np.testing.assert_allclose(rot, [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], atol=1e-6)
    shift = np.asarray(T.affine_matrix(jnp.array([0.2, -0.1, 0, 0, 0.0])))
    np.testing.assert_allclose(shift, [[1, 0, 0.2], [0, 1, -0.1], [0, 0, 1]], atol=1e-6)
    scale = np.asarray(T.affine_matrix(jnp.array([0, 0, 0, 0.3, -0.2])))
    np.testing.assert_allclose(np.diag(scale), [np.exp(0.3), np.exp(-0.2), 1], atol=1e-6)
    shear = np.asarray(T.affine_matrix(jnp.array([0, 0, 0, 0, 0, 0.1])))
    np.testing.assert_allclose(shear[:2, :2], [[np.cosh(0.1), np.sinh(0.1)], [np.sinh(0.1), np.cosh(0.1)]], atol=1e-6)
    # expm of the SUM of generators: rotation and shift together are not a product of their exponentials
    both = np.asarray(T.affine_matrix(jnp.array([0.2, 0, 0.5, 0, 0.0])))
    product = np.asarray(T.affine_matrix(jnp.array([0.2, 0, 0, 0, 0.0])) @ T.affine_matrix(jnp.array([0, 0, 0.5, 0, 0.0])))
    assert np.abs(both - product).max() > 1e-3


def test_identity_warp_is_exact_for_both_orders():
    x = jax.random.uniform(jax.random.key(0), (1, 9, 11, 3), minval=-1, maxval=1)
    for order in (1, 3):
        y = jax.jit(lambda v: AFFINE.apply_eta(v, jnp.zeros((1, 5)), order=order))(x)
        np.testing.assert_allclose(y, x, atol=1e-5)


def test_bilinear_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (10, 12)).astype(np.float32)
    rows, cols = rng.uniform(-2, 11, 200), rng.uniform(-2, 13, 200)
    ours = T.sample(jnp.asarray(img)[..., None], jnp.asarray(rows), jnp.asarray(cols), order=1, cval=-1.0)[..., 0]
    ref = scipy.ndimage.map_coordinates(img, [rows, cols], order=1, mode="grid-constant", cval=-1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_bicubic_reproduces_quadratics_inside():
    r, c = np.meshgrid(np.arange(12.0), np.arange(12.0), indexing="ij")
    f = lambda r, c: 0.01 * (r**2 - 0.5 * r * c + 2 * c**2) - 0.3 * r + 0.1  # noqa: E731
    img = jnp.asarray(f(r, c), jnp.float32)[..., None]
    rows, cols = np.random.default_rng(1).uniform(2, 9, (2, 50))
    out = T.sample(img, jnp.asarray(rows), jnp.asarray(cols), order=3)[..., 0]
    np.testing.assert_allclose(out, f(rows, cols), atol=1e-4)


def test_direction_shift_moves_content_by_minus_t():
    x = blob()[None]
    t = 0.25
    y = AFFINE.apply_eta(x, jnp.array([[t, 0, 0, 0, 0.0]]))
    moved = centroid(y[0]) - centroid(x[0])
    np.testing.assert_allclose(moved, [0.0, -t * (24 - 1) / 2], atol=0.15)


@pytest.mark.parametrize("order", [1, 3])
def test_transform_then_inverse_is_identity_up_to_interpolation(order):
    x = blob(centre=(11.5, 12.5), width=2.0)[None]
    eta = jnp.array([[0.1, -0.05, 0.7, 0.15, -0.1]])
    there = AFFINE.apply_eta(x, eta, order=order)
    back = AFFINE.apply(there, T.inverse(AFFINE.transform(eta)), order=order)
    err = jnp.abs(back - x)
    assert float(jnp.max(err)) < (0.08 if order == 3 else 0.25)  # bilinear blurs the peak more
    assert float(jnp.mean(err)) < 0.01
    # and the inverse of expm(X) is expm(-X)
    np.testing.assert_allclose(T.inverse(AFFINE.transform(eta)).matrix, AFFINE.transform(-eta).matrix, atol=1e-5)


def test_composition_is_matrix_product_and_order():
    x = blob(centre=(10.0, 13.0), width=2.2)[None]
    e1, e2 = jnp.array([[0.1, 0.0, 0.4, 0.0, 0.1]]), jnp.array([[0.0, -0.1, -0.2, 0.1, 0.0]])
    t1, t2 = AFFINE.transform(e1), AFFINE.transform(e2)
    np.testing.assert_allclose(T.compose(t1, t2).matrix, t1.matrix @ t2.matrix, atol=1e-6)
    two_warps = AFFINE.apply(AFFINE.apply(x, t1), t2)
    one_warp = AFFINE.apply(x, T.compose(t1, t2))
    assert float(jnp.max(jnp.abs(two_warps - one_warp))) < 0.05
    wrong = AFFINE.apply(x, T.compose(t2, t1))
    assert float(jnp.max(jnp.abs(two_warps - wrong))) > 0.2  # order matters, and ours is the right one
    # rotations about the same centre commute and add
    r = lambda a: AFFINE.transform(jnp.array([0, 0, a, 0, 0.0])).matrix  # noqa: E731
    np.testing.assert_allclose(r(0.3) @ r(0.5), r(0.8), atol=1e-6)


def test_hsv_roundtrip_matches_colorsys():
    rgb = np.random.default_rng(2).uniform(0, 1, (200, 3)).astype(np.float32)
    ours = np.asarray(T.rgb_to_hsv(jnp.asarray(rgb)))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(T.hsv_to_rgb(jnp.asarray(ours)), rgb, atol=1e-5)


def test_colour_composition_is_additive_and_invertible():
    fam = T.Family("hsv")
    rgb = np.random.default_rng(3).uniform(0.2, 0.8, (1, 6, 6, 3)).astype(np.float32)
    x = jnp.asarray(rgb * 2 - 1)
    a, b = jnp.array([[0.3, 0.1, -0.1]]), jnp.array([[0.9, -0.2, 0.05]])  # hue sum 1.2 wraps around
    seq = fam.apply_eta(fam.apply_eta(x, a), b)
    np.testing.assert_allclose(seq, fam.apply_eta(x, a + b), atol=1e-5)
    np.testing.assert_allclose(T.compose(fam.transform(a), fam.transform(b)).colour, a + b)
    np.testing.assert_allclose(fam.apply(fam.apply_eta(x, a), T.inverse(fam.transform(a))), x, atol=1e-5)
    # a hue shift of one full turn is the identity
    np.testing.assert_allclose(fam.apply_eta(x, jnp.array([[1.0, 0, 0]])), x, atol=1e-5)


def test_passthrough_clip_gradient_and_value():
    x = jnp.array([-0.5, 0.5, 1.5])
    np.testing.assert_allclose(T.passthrough_clip(x), [0, 0.5, 1])
    np.testing.assert_allclose(jax.grad(lambda v: T.passthrough_clip(v).sum())(x), [1, 1, 1])


def test_colour_gradients_are_finite_on_grey_and_black():
    fam = T.Family("affine_hsv")
    x = jnp.concatenate([-jnp.ones((1, 6, 6, 3)), jnp.zeros((1, 6, 6, 3))], axis=2)  # black and grey halves
    g = jax.jit(jax.grad(lambda e: fam.apply_eta(x, e).sum()))(jnp.full((1, 8), 0.1))
    assert np.all(np.isfinite(np.asarray(g)))


def test_combined_family_applies_colour_then_warp():
    fam = T.Family("affine_hsv")
    x = blob(channels=3)[None]
    eta = jnp.array([[0.1, 0, 0.3, 0, 0, 0.2, 0.1, -0.1]])
    hsv = T.Family("hsv").apply_eta(x, eta[:, 5:])
    expect = AFFINE.apply_eta(hsv, eta[:, :5])
    np.testing.assert_allclose(fam.apply_eta(x, eta), expect, atol=1e-5)


@pytest.mark.parametrize("squash", [False, True])
def test_bounds_roundtrip_and_log_det(squash):
    b = T.Bounds.create(T.Family("hsv"), (0.5, 2.3, 0.5), (0.5, 0, 0), squash)
    u = jnp.array([[0.3, -1.2, 2.0]])
    eta = b.to_eta(u)
    np.testing.assert_allclose(b.to_unconstrained(eta), u, atol=1e-4)
    jac = jax.jacfwd(lambda v: b.to_eta(v[None])[0])(u[0])
    np.testing.assert_allclose(b.log_det(u)[0], np.log(np.abs(np.linalg.det(jac))), atol=1e-5)
    if squash:
        assert np.all(np.abs(np.asarray(b.to_eta(jnp.full((1, 3), 50.0))) - 0.5 * np.array([1, 0, 0])) <= np.array([0.5, 2.3, 0.5]) + 1e-6)
    s = b.sample_uniform(jax.random.key(0), (1000,), mult=0.5)
    assert np.all(np.abs(np.asarray(s) - np.array([0.5, 0, 0])) <= 0.5 * np.array([0.5, 2.3, 0.5]) + 1e-6)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(T.TransformError, match=r"expected \[B, H, W, C\]"):
        AFFINE.apply_eta(jnp.zeros((8, 8, 1)), jnp.zeros((1, 5)))
    with pytest.raises(T.TransformError, match="2 channels"):
        AFFINE.apply_eta(jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 5)))
    with pytest.raises(T.TransformError, match=">= 4"):
        AFFINE.apply_eta(jnp.zeros((1, 3, 8, 1)), jnp.zeros((1, 5)))
    with pytest.raises(T.TransformError, match="needs RGB"):
        T.Family("affine_hsv").apply_eta(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8)))
    with pytest.raises(T.TransformError, match="last axis of 5"):
        AFFINE.transform(jnp.zeros((1, 3)))
    with pytest.raises(T.TransformError, match="3 entries, the 'affine' family needs 5"):
        T.Bounds.create(AFFINE, (1.0, 1.0, 1.0))
    with pytest.raises(T.TransformError, match="> 0"):
        T.Bounds.create(AFFINE, (1.0, 1.0, 0.0, 1.0, 1.0))
    with pytest.raises(T.TransformError, match="non-finite"):
        T.check_finite_eta(np.array([0.0, np.nan, 0, 0, 0]))
    with pytest.raises(T.TransformError, match="1 non-finite"):
        AFFINE.apply_eta(jnp.zeros((1, 8, 8, 1)), jnp.array([[0.0, np.nan, 0, 0, 0]]))
    with pytest.raises(T.TransformError, match="known are"):
        T.Family("projective")
    with pytest.raises(T.TransformError, match="interpolation order 2"):
        T.warp(jnp.zeros((8, 8, 1)), jnp.eye(3), order=2)


def test_blur_is_identity_at_zero_and_smooths():
    x = jax.random.uniform(jax.random.key(1), (2, 10, 10, 1), minval=-1, maxval=1)
    np.testing.assert_allclose(T.gaussian_blur(x, jnp.array(0.0)), x, atol=1e-6)
    assert float(jnp.std(T.gaussian_blur(x, jnp.array(2.0)))) < float(jnp.std(x))
