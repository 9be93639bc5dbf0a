"""The SGM training objectives (digest §3.2, §3.3, §4.2), batched over examples and augmentation samples.

Choices where the paper and the reference code differ (digest §9.5): we follow the *code*. The invariance loss
composes the whole chain ``T_r2^-1 . T_e2 . T_e1^-1 . T_r1`` into one grid matrix and compares the single warp of x
with x (one interpolation instead of two, which is the paper's own argument for composing), and the
invertibility loss is applied to the first augmented copy ``x_r1`` with two separate warps (that is its point:
content pushed out of frame by T_e1 cannot come back).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mdiff.symmetry.transforms import Bounds, Family, compose, gaussian_blur, inverse


def _repeat(x: jax.Array, n: int) -> jax.Array:
    return jnp.repeat(x, n, axis=0)


def invariance_loss(model, family: Family, bounds: Bounds, x: jax.Array, key: jax.Array, *, n_samples: int,
                    symmetric: bool, invertibility: float, order: int, blur_sigma=None, aug_mult=1.0):
    """Stage-1 loss for images x [B, H, W, C] -> (loss, metrics).

    `aug_mult` scales the uniform augmentation range (the augmentation-range schedule of train.py).
    """
    if blur_sigma is not None:
        x = gaussian_blur(x, blur_sigma)
    xs = _repeat(x, n_samples)
    n = xs.shape[0]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    eta_r1 = bounds.sample_uniform(k1, (n,), mult=aug_mult)
    eta_r2 = bounds.sample_uniform(k2, (n,), mult=aug_mult) if symmetric else jnp.zeros_like(eta_r1)
    t_r1, t_r2 = family.transform(eta_r1), family.transform(eta_r2)
    x_r1 = family.apply(xs, t_r1, order=order)
    x_r2 = family.apply(xs, t_r2, order=order) if symmetric else xs
    t_e1 = family.transform(model.sample(k3, x_r1))
    t_e2 = family.transform(model.sample(k4, x_r2))
    chain = compose(t_r1, inverse(t_e1), t_e2, inverse(t_r2))
    x_mse = jnp.mean((xs - family.apply(xs, chain, order=order)) ** 2)
    loss = x_mse
    metrics = {"x_mse": x_mse}
    if invertibility > 0:
        there = family.apply(x_r1, t_e1, order=order)
        back = family.apply(there, inverse(t_e1), order=order)
        inv_mse = jnp.mean((x_r1 - back) ** 2)
        loss = loss + invertibility * inv_mse
        metrics["inv_mse"] = inv_mse
    return loss, metrics


def prototypes(inf, family: Family, x: jax.Array, key: jax.Array, order: int) -> tuple[jax.Array, jax.Array]:
    """eta ~ q(eta | x) and the prototype x_hat = T_eta^-1(x)."""
    eta = inf.sample(key, x)
    return eta, family.apply(x, inverse(family.transform(eta)), order=order)


def flow_loss(flow, inf, family: Family, bounds: Bounds, x: jax.Array, key: jax.Array, *, n_samples: int,
              bounds_mult: float, consistency: float, order: int, train: bool = True):
    """Stage-2 loss: -log p(eta_x | noisy prototype) + consistency; `inf` is frozen (no gradient reaches it)."""
    b = x.shape[0]
    xs = _repeat(x, n_samples)
    n = xs.shape[0]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    eta_x = jax.lax.stop_gradient(inf.sample(k1, xs))  # target: inferred from the clean image
    t_r = family.transform(bounds.sample_uniform(k2, (n,), mult=bounds_mult))
    x_r = family.apply(xs, t_r, order=order)
    t_er = family.transform(jax.lax.stop_gradient(inf.sample(k3, x_r)))
    x_hat = family.apply(xs, compose(t_r, inverse(t_er)), order=order)  # one warp: T_er^-1 . T_r
    log_p = flow.log_prob(eta_x, x_hat, key=k4 if train else None).reshape(b, n_samples)
    nll = -jnp.mean(log_p)
    spread = jnp.mean(jnp.abs(log_p[:, :, None] - log_p[:, None, :]))
    loss = nll + consistency * spread if consistency > 0 else nll
    return loss, {"log_p": -nll, "consistency": spread}
