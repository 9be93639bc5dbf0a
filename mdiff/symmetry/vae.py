"""VAEs combined with a trained SGM (digest §6.3): VAE, AugVAE and the prototype-VAE (the paper's InvVAE).

* ``vae``: a plain VAE on x.
* ``augvae``: each training image is replaced by a natural augmentation x' = T_eta' . T_eta^-1 (x), one composed
  warp, with eta ~ q(eta | x) and eta' ~ p(eta | x_hat), x_hat = T_eta^-1(x); evaluated as a plain VAE on test x.
* ``protovae``: the VAE models prototypes x_hat = T_eta^-1(x) only; the model of x is (x_hat, eta) with
  eta ~ p(eta | x_hat). Importance-weighted bound with K samples, each resampling eta and z:
  log p(eta | x_hat) + log p(x_hat | z) + log p(z) - log q(eta | x) - log q(z | x_hat), logsumexp - log K.
  As the digest notes, there is no Jacobian of x <-> (x_hat, eta) (T is lossy), so this bounds a density of
  (x_hat, eta) rather than a strict pixel-space p(x); the numbers are reported as the paper does, with that caveat.

Likelihood: Gaussian per pixel on [-1, 1] with a learned per-pixel sigma (init 1, >= 0.01); prior N(mu, sigma) with
learnable mu (init 0) and sigma (init 1); encoder heads zero-initialised so q(z | x) = N(0, 1) at the start.
The networks are MLPs (the paper uses small conv nets) so that the comparison runs on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mdiff.symmetry import losses
from mdiff.symmetry.nets import MLP, inv_softplus
from mdiff.symmetry.transforms import compose, inverse

LOG_2PI = math.log(2 * math.pi)


def _normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * LOG_2PI


class VAE(nnx.Module):
    def __init__(self, image_shape: tuple[int, ...], latent: int, hidden: tuple[int, ...], *, rngs: nnx.Rngs):
        d = math.prod(image_shape)
        self.image_shape = tuple(image_shape)
        self.encoder = MLP(d, hidden, rngs=rngs)
        zeros = nnx.initializers.zeros
        self.enc_mu = nnx.Linear(hidden[-1], latent, kernel_init=zeros, bias_init=zeros, rngs=rngs)
        self.enc_sigma = nnx.Linear(hidden[-1], latent, kernel_init=zeros, bias_init=zeros, rngs=rngs)
        self.decoder = MLP(latent, tuple(reversed(hidden)), rngs=rngs)
        self.dec_mu = nnx.Linear(hidden[0], d, rngs=rngs)
        self.pixel_sigma_raw = nnx.Param(jnp.full((d,), inv_softplus(0.99), jnp.float32))
        self.prior_mu = nnx.Param(jnp.zeros((latent,)))
        self.prior_sigma_raw = nnx.Param(jnp.full((latent,), inv_softplus(1.0), jnp.float32))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x.reshape(x.shape[0], -1))
        return self.enc_mu(h), jax.nn.softplus(self.enc_sigma(h) + inv_softplus(0.99)) + 0.01

    def log_weights(self, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
        """[k, B]: log p(x | z) + log p(z) - log q(z | x) for z ~ q(z | x)."""
        mu, sigma = self.encode(x)
        z = mu + sigma * jax.random.normal(key, (k, *mu.shape))
        log_q = jnp.sum(_normal_logpdf(z, mu, sigma), axis=-1)
        prior_sigma = jax.nn.softplus(self.prior_sigma_raw[...])
        log_prior = jnp.sum(_normal_logpdf(z, self.prior_mu[...], prior_sigma), axis=-1)
        mean = self.dec_mu(self.decoder(z.reshape(-1, z.shape[-1]))).reshape(k, x.shape[0], -1)
        pix_sigma = jax.nn.softplus(self.pixel_sigma_raw[...]) + 0.01
        log_lik = jnp.sum(_normal_logpdf(x.reshape(1, x.shape[0], -1), mean, pix_sigma), axis=-1)
        return log_lik + log_prior - log_q

    def reconstruct(self, x: jax.Array) -> jax.Array:
        mu, _ = self.encode(x)
        return self.dec_mu(self.decoder(mu)).reshape(x.shape)


def iwlb(log_w: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def _prototype_log_weights(vae, inf, flow, family, x, key, k, order):
    """[k, B] importance weights of the prototype-VAE (eta and z resampled per sample)."""
    def one(key_s):
        k1, k2 = jax.random.split(key_s)
        eta, log_q_eta = inf.sample_with_log_prob(k1, x)
        x_hat = family.apply(x, inverse(family.transform(eta)), order=order)
        return flow.log_prob(eta, x_hat) - log_q_eta + vae.log_weights(x_hat, k2, 1)[0]
    return jax.lax.map(one, jax.random.split(key, k))


def training_images(kind: str, inf, flow, family, x, key, order):
    """What the VAE of `kind` trains on for a batch x."""
    if kind == "vae":
        return x
    k1, k2 = jax.random.split(key)
    eta, x_hat = losses.prototypes(inf, family, x, k1, order)
    if kind == "protovae":
        return x_hat
    eta_new = flow.sample(k2, x_hat, 1)[0]
    t = compose(inverse(family.transform(eta)), family.transform(eta_new))
    return jnp.clip(family.apply(x, t, order=order), -1.0, 1.0)


def train_vae(kind: str, config, trainer, train_images: np.ndarray, seed: int):
    """Train one VAE of `kind`; returns the VAE module."""
    v = config.vae
    vae = VAE(train_images.shape[1:], v.latent, tuple(v.hidden), rngs=nnx.Rngs(seed))
    graph, params = nnx.split(vae, nnx.Param)
    sched = optax.warmup_cosine_decay_schedule(v.lr * v.init_mult, v.lr, max(int(v.steps * v.warmup), 1),
                                               max(v.steps, 2), v.lr * v.final_mult)
    tx = optax.chain(optax.clip_by_global_norm(v.clip), optax.adamw(sched, weight_decay=v.weight_decay))
    opt = tx.init(params)
    inf, flow = trainer.inference_net(), trainer.flow()
    order = config.transform.order

    @jax.jit
    def step(params, opt, x, key):
        k1, k2 = jax.random.split(key)
        xt = jax.lax.stop_gradient(training_images(kind, inf, flow, trainer.family, x, k1, order))

        def loss_fn(p):
            return -jnp.mean(nnx.merge(graph, p).log_weights(xt, k2, 1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    root = jax.random.key(seed)
    for i in range(v.steps):
        idx = np.random.default_rng([seed, i, 11]).choice(len(train_images), v.batch,
                                                          replace=len(train_images) < v.batch)
        params, opt, _ = step(params, opt, jnp.asarray(train_images[idx]), jax.random.fold_in(root, i))
    return nnx.merge(graph, params)


def test_bound(kind: str, vae: VAE, config, trainer, images: np.ndarray, seed: int, chunk: int = 16) -> np.ndarray:
    """Per-image importance-weighted bound on the test images (K = config.vae.iw_samples)."""
    k = config.vae.iw_samples
    inf, flow = trainer.inference_net(), trainer.flow()
    order = config.transform.order

    @jax.jit
    def bound(x, key):
        if kind == "protovae":
            return iwlb(_prototype_log_weights(vae, inf, flow, trainer.family, x, key, k, order))
        return iwlb(vae.log_weights(x, key, k))

    root = jax.random.key(seed)
    return np.concatenate([np.asarray(bound(jnp.asarray(images[i : i + chunk]), jax.random.fold_in(root, i)))
                           for i in range(0, len(images), chunk)])


def run_vaes(config, trainer, splits: dict, log=print) -> dict[str, Any]:
    """Train and evaluate every VAE of `config.vae.models`; metrics `vae/<kind>/test_iwlb` (+ s.e.)."""
    out: dict[str, Any] = {}
    test = splits["test"].images
    for kind in config.vae.models:
        vae = train_vae(kind, config, trainer, splits["train"].images, config.seed + 1000)
        values = test_bound(kind, vae, config, trainer, test, config.seed + 2000)
        out[f"vae/{kind}/test_iwlb"] = float(values.mean())
        out[f"vae/{kind}/test_iwlb_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        log(f"{kind}: test bound {out[f'vae/{kind}/test_iwlb']:.1f} +- {out[f'vae/{kind}/test_iwlb_se']:.1f} nats")
    return out
