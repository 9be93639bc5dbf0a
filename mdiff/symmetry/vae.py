"""VAEs combined with a trained SGM (digest §6.3): VAE, AugVAE and the prototype-VAE (the paper's InvVAE).

All three rows report the same quantity: an importance-weighted lower bound (IWLB) on log p(x), the density of
the *test image pixels* x in [-1, 1]^D under a Gaussian observation model with a learned per-pixel sigma
(init 1, >= 0.01), in nats per image. Because the pixels are continuous these are densities, so the bound can be
positive (sharp models) or negative (a model that puts small sigma where test pixels deviate from its mean).

* ``vae``: p(z) p(x | z) on x; trained by the ELBO on training images.
* ``augvae``: the same model, trained on natural augmentations x' = T_eta' . T_eta^-1 (x) (one composed warp,
  eta ~ q(eta | x), eta' ~ p(eta | x_hat), x_hat = T_eta^-1 (x)); scored as a plain VAE on untransformed test x.
* ``protovae``: a VAE of prototypes, combined with the SGM's p(eta | x_hat) into a model of x:

      z ~ p(z),   x_hat = mu(z) (the decoder mean),   eta ~ p(eta | x_hat),   x ~ N(T_eta(x_hat), diag sigma^2).

  Bound with K samples, each resampling eta and z (proposal q(eta | x) q(z | T_eta^-1 (x))):

      log w = log p(z) + log p(eta | mu(z)) + log N(x; T_eta(mu(z)), sigma^2) - log q(eta | x) - log q(z | T_eta^-1 x)

  and IWLB = logsumexp_k log w_k - log K. Since p(z, eta, x) is a normalised joint density over pixel space and
  the proposal is a normalised density over (z, eta), this is a lower bound on the same log p(x) as the other
  rows (tests/test_symmetry_vae.py checks it against the exact value by quadrature).

Choices for the prototype-VAE (where the paper's construction is ambiguous or not a pixel-space bound):

1. Where the pixel noise lives. The paper's InvVAE weight is log p(eta | x_hat) + log p(x_hat | z) + log p(z)
   - log q(eta | x) - log q(z | x_hat) with x_hat = T_eta^-1(x): its Gaussian is on the *prototype's* pixels and
   no Jacobian of x <-> (x_hat, eta) appears. T_eta is a lossy warp (interpolation, content leaving the frame),
   so that Jacobian does not exist (the map is singular) and the paper's number bounds a density over
   (x_hat, eta), not over x. We keep every other part of the construction (same VAE, prototype encoder input,
   the SGM's q(eta | x) and p(eta | x_hat), eta and z resampled per importance sample, same K) and move the
   Gaussian to the observed frame: the prototype is the decoder mean and x = T_eta(prototype) + noise. The two
   observation terms coincide exactly whenever T_eta permutes pixels (e.g. a 90-degree rotation of a square
   image) and sigma is shared by all pixels; otherwise they differ by the missing volume change (zoom,
   sub-pixel shifts) and the content the warp loses.
   Alternatives rejected: adding log|det dT_eta^-1/dx| (singular for every warp that loses content, and a
   D x D determinant per sample); a stochastic prototype with its own noise (a D-dimensional latent to
   integrate over, with no tractable proposal).
2. p(eta | x_hat) is conditioned on the decoder mean mu(z), the only prototype the generative model has.
3. Training: the prototype-VAE is trained on the K = 1 version of the bound it is scored with (the ELBO of the
   pixel-space model above; q(eta | x) and the flow frozen, the flow's dropout off as at test), not on the
   ELBO of prototype pixels as in the paper: with the noise in the observed frame, fitting sigma on prototypes
   would fit it in the wrong frame. Gradients reach the decoder through the warp and through p(eta | mu(z)).

The paper's own InvVAE weight is available as a fourth model, ``invvae`` (not one of the pixel-space rows):

      log w = log p(eta | x_hat) + log N(x_hat; mu(z), sigma^2) + log p(z) - log q(eta | x) - log q(z | x_hat),
      x_hat = T_eta^-1 (x),

trained on its K = 1 version (the VAE's ELBO on inferred prototypes; the eta terms carry no VAE parameter) and
scored with the same K. It bounds a density over (prototype, eta), not log p(x) of the test pixels (choice 1
above), so it is reported beside the pixel-space rows, never compared with them as if it were one of them.

Early stopping and checkpoint selection (all models alike): every `vae.valid_every` steps the ELBO on the
validation images (untransformed x, the quantity the test bound measures; for invvae its own weight) is
computed; the parameters with the best value are kept, and training stops once `vae.patience` checks in a row
did not improve on it (patience 0: run all `vae.steps`, still keeping the best). `vae.steps` is then a cap, and
the learning-rate schedule decays over the cap. The paper also selects by validation ELBO (over its grid).

Prior N(mu, sigma) with learnable mu (init 0) and sigma (init 1); encoder heads zero-initialised so
q(z | x) = N(0, 1) at the start. The networks are MLPs (the paper uses small conv nets) so the comparison runs
on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mdiff.symmetry import losses
from mdiff.symmetry.nets import MLP, inv_softplus
from mdiff.symmetry.transforms import Family, compose, inverse

LOG_2PI = math.log(2 * math.pi)
KINDS = ("vae", "augvae", "protovae")  # the rows that bound log p(x) of the same test pixels
MODELS = (*KINDS, "invvae")  # plus the paper's InvVAE weight (a bound on a density over (prototype, eta))
VALID_DRAWS = 4  # z (and eta) draws per validation image for the validation ELBO


def _normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * LOG_2PI


def pixel_log_lik(x: jax.Array, mean: jax.Array, sigma: jax.Array) -> jax.Array:
    """The observation model of every row: sum over pixels of log N(x; mean, sigma^2).

    x [B, ...] (the images being scored), mean [..., B, D] (broadcast over leading sample axes), sigma [D].
    """
    flat = x.reshape(x.shape[0], -1)
    return jnp.sum(_normal_logpdf(flat, mean, sigma), axis=-1)


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

    def decode(self, z: jax.Array) -> jax.Array:
        """Decoder mean, [..., D] for z [..., latent]."""
        flat = z.reshape(-1, z.shape[-1])
        return self.dec_mu(self.decoder(flat)).reshape(*z.shape[:-1], -1)

    def pixel_sigma(self) -> jax.Array:
        return jax.nn.softplus(self.pixel_sigma_raw[...]) + 0.01

    def log_prior(self, z: jax.Array) -> jax.Array:
        sigma = jax.nn.softplus(self.prior_sigma_raw[...])
        return jnp.sum(_normal_logpdf(z, self.prior_mu[...], sigma), axis=-1)

    def sample_posterior(self, x: jax.Array, key: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """z ~ q(z | x) [k, B, latent] and log q(z | x) [k, B]."""
        mu, sigma = self.encode(x)
        z = mu + sigma * jax.random.normal(key, (k, *mu.shape))
        return z, jnp.sum(_normal_logpdf(z, mu, sigma), axis=-1)

    def log_weights(self, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
        """[k, B]: log p(x | z) + log p(z) - log q(z | x) for z ~ q(z | x)."""
        z, log_q = self.sample_posterior(x, key, k)
        return pixel_log_lik(x, self.decode(z), self.pixel_sigma()) + self.log_prior(z) - log_q

    def reconstruct(self, x: jax.Array) -> jax.Array:
        mu, _ = self.encode(x)
        return self.decode(mu).reshape(x.shape)


def iwlb(log_w: jax.Array) -> jax.Array:
    """Importance-weighted bound from log weights [K, B]: logsumexp over K minus log K."""
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


@dataclasses.dataclass(frozen=True)
class SGMParts:
    """The frozen SGM pieces the VAE combinations use: q(eta | x), p(eta | x_hat), the family, interpolation."""

    inf: Any
    flow: Any
    family: Family
    order: int

    @classmethod
    def from_trainer(cls, trainer) -> "SGMParts":
        return cls(trainer.inference_net(), trainer.flow(), trainer.family, trainer.config.transform.order)

    def split(self) -> tuple[Callable[[Any], "SGMParts"], Any]:
        """(rebuild, arrays): pass `arrays` into a jitted function and call rebuild(arrays) inside it, so the
        SGM's parameters are arguments rather than constants baked into the compiled program (faster compiles,
        and the persistent compilation cache can reuse the program for another trained SGM)."""
        inf_g, inf_s = nnx.split(self.inf)
        flow_g, flow_s = nnx.split(self.flow)

        def rebuild(arrays) -> "SGMParts":
            return SGMParts(nnx.merge(inf_g, arrays[0]), nnx.merge(flow_g, arrays[1]), self.family, self.order)

        return rebuild, (inf_s, flow_s)


def prototype_log_weights(vae: VAE, sgm: SGMParts, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """[k, B] log weights of the prototype-VAE's pixel-space bound (eta and z resampled per sample)."""
    shape = x.shape

    def one(key_s):
        k1, k2 = jax.random.split(key_s)
        eta, log_q_eta = sgm.inf.sample_with_log_prob(k1, x)
        t = sgm.family.transform(eta)
        z, log_q_z = vae.sample_posterior(sgm.family.apply(x, inverse(t), order=sgm.order), k2, 1)
        proto = vae.decode(z[0]).reshape(shape)
        mean_x = sgm.family.apply(proto, t, order=sgm.order).reshape(shape[0], -1)
        log_lik = pixel_log_lik(x, mean_x, vae.pixel_sigma())
        return vae.log_prior(z[0]) + sgm.flow.log_prob(eta, proto) + log_lik - log_q_eta - log_q_z[0]

    return jax.lax.map(one, jax.random.split(key, k))


def invvae_log_weights(vae: VAE, sgm: SGMParts, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """[k, B] log weights of the paper's InvVAE (Gaussian on the inferred prototype's pixels, no Jacobian)."""

    def one(key_s):
        k1, k2 = jax.random.split(key_s)
        eta, log_q_eta = sgm.inf.sample_with_log_prob(k1, x)
        x_hat = sgm.family.apply(x, inverse(sgm.family.transform(eta)), order=sgm.order)
        z, log_q_z = vae.sample_posterior(x_hat, k2, 1)
        log_lik = pixel_log_lik(x_hat, vae.decode(z[0]), vae.pixel_sigma())
        return vae.log_prior(z[0]) + sgm.flow.log_prob(eta, x_hat) + log_lik - log_q_eta - log_q_z[0]

    return jax.lax.map(one, jax.random.split(key, k))


def log_weights(kind: str, vae: VAE, sgm: SGMParts | None, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """[k, B] log importance weights of the model of `kind` for the images x (the same x for every kind)."""
    if kind not in MODELS:
        raise ValueError(f"VAE kind {kind!r}: known are {MODELS}")
    if kind in ("protovae", "invvae"):
        if sgm is None:
            raise ValueError(f"the {kind} needs the trained SGM (q(eta | x) and p(eta | x_hat))")
        return (prototype_log_weights if kind == "protovae" else invvae_log_weights)(vae, sgm, x, key, k)
    return vae.log_weights(x, key, k)  # VAE and AugVAE: the same plain-VAE density of x


def training_images(kind: str, sgm: SGMParts, x: jax.Array, key: jax.Array) -> jax.Array:
    """The images the plain-VAE objective sees for a training batch x (vae: x; augvae: natural augmentations)."""
    if kind == "vae":
        return x
    if kind != "augvae":
        raise ValueError(f"training_images is for 'vae' and 'augvae', not {kind!r}")
    k1, k2 = jax.random.split(key)
    eta, x_hat = losses.prototypes(sgm.inf, sgm.family, x, k1, sgm.order)
    eta_new = sgm.flow.sample(k2, x_hat, 1)[0]
    t = compose(inverse(sgm.family.transform(eta)), sgm.family.transform(eta_new))
    return jnp.clip(sgm.family.apply(x, t, order=sgm.order), -1.0, 1.0)


def _training_loss(kind: str, vae: VAE, sgm: SGMParts, x: jax.Array, key: jax.Array) -> jax.Array:
    """Negative ELBO (K = 1) of the batch under the objective of `kind`."""
    k1, k2 = jax.random.split(key)
    if kind in ("protovae", "invvae"):
        return -jnp.mean(log_weights(kind, vae, sgm, x, k2, 1))
    xt = jax.lax.stop_gradient(training_images(kind, sgm, x, k1))
    return -jnp.mean(vae.log_weights(xt, k2, 1))


@dataclasses.dataclass
class EarlyStopping:
    """Keeps the best (highest) validation value and its parameters; says stop after `patience` checks in a row
    without a strict improvement (patience 0: never)."""

    patience: int
    best: float = -math.inf
    best_step: int = 0
    best_params: Any = None
    since_best: int = 0

    def update(self, value: float, step: int, params: Any) -> bool:
        if value > self.best:
            self.best, self.best_step, self.best_params, self.since_best = value, step, params, 0
        else:
            self.since_best += 1
        return bool(self.patience) and self.since_best >= self.patience


def train_vae(kind: str, config, sgm: SGMParts, train_images: np.ndarray, valid_images: np.ndarray | None,
              seed: int, log: Callable[[str], None] = lambda m: None) -> tuple[VAE, dict[str, float]]:
    """Train one VAE of `kind` with early stopping on the validation ELBO (see the module docstring).

    Returns the VAE with the best validation ELBO and {"best_step", "stopped_step", "valid_elbo"} (without
    validation images: the last parameters, valid_elbo NaN).
    """
    if kind not in MODELS:
        raise ValueError(f"VAE kind {kind!r}: known are {MODELS}")
    v = config.vae
    vae = VAE(train_images.shape[1:], v.latent, tuple(v.hidden), rngs=nnx.Rngs(seed))
    graph, params = nnx.split(vae, nnx.Param)
    sched = optax.warmup_cosine_decay_schedule(v.lr * v.init_mult, v.lr, max(int(v.steps * v.warmup), 1),
                                               max(v.steps, 2), v.lr * v.final_mult)
    tx = optax.chain(optax.clip_by_global_norm(v.clip), optax.adamw(sched, weight_decay=v.weight_decay))
    opt = tx.init(params)

    rebuild, sgm_arrays = sgm.split()

    @jax.jit
    def step(params, opt, sgm_arrays, x, key):
        parts = rebuild(sgm_arrays)
        loss, grads = jax.value_and_grad(lambda p: _training_loss(kind, nnx.merge(graph, p), parts, x, key))(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    @jax.jit
    def valid_elbo(params, sgm_arrays, x, key):  # mean over draws of the K = 1 bound: the ELBO of the scored model
        return jnp.mean(log_weights(kind, nnx.merge(graph, params), rebuild(sgm_arrays), x, key, VALID_DRAWS))

    def validate(params) -> float:  # all validation images in one batch: one compiled shape
        return float(valid_elbo(params, sgm_arrays, jnp.asarray(valid_images), jax.random.key(seed + 7)))

    has_valid = valid_images is not None and len(valid_images) > 0
    stopper = EarlyStopping(v.patience)
    root = jax.random.key(seed)
    stopped = v.steps
    for i in range(v.steps):
        idx = np.random.default_rng([seed, i, 11]).choice(len(train_images), v.batch,
                                                          replace=len(train_images) < v.batch)
        params, opt, _ = step(params, opt, sgm_arrays, jnp.asarray(train_images[idx]), jax.random.fold_in(root, i))
        if has_valid and ((i + 1) % v.valid_every == 0 or i + 1 == v.steps):
            elbo = validate(params)
            if not math.isfinite(elbo):
                raise FloatingPointError(f"{kind}: validation ELBO {elbo} at step {i + 1}")
            if stopper.update(elbo, i + 1, params):
                stopped = i + 1
                break
    if not has_valid:
        return nnx.merge(graph, params), {"best_step": float(v.steps), "stopped_step": float(v.steps),
                                          "valid_elbo": float("nan")}
    log(f"{kind}: best validation ELBO {stopper.best:.1f} at step {stopper.best_step} (stopped at {stopped}/{v.steps})")
    return nnx.merge(graph, stopper.best_params), {"best_step": float(stopper.best_step),
                                                   "stopped_step": float(stopped), "valid_elbo": stopper.best}


def score_images(kind: str, vae: VAE, sgm: SGMParts | None, images: np.ndarray, k: int, seed: int,
               chunk: int = 16) -> np.ndarray:
    """Per-image IWLB (K = k) on `images`, [N] nats (chunks of `chunk` images, the last one padded)."""
    graph, vae_arrays = nnx.split(vae)
    rebuild, sgm_arrays = sgm.split() if sgm is not None else (lambda a: None, None)

    @jax.jit
    def bound(vae_arrays, sgm_arrays, x, key):
        return iwlb(log_weights(kind, nnx.merge(graph, vae_arrays), rebuild(sgm_arrays), x, key, k))

    root = jax.random.key(seed)
    out = []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk]
        pad = np.concatenate([x, np.repeat(x[-1:], chunk - len(x), axis=0)]) if len(x) < chunk else x
        out.append(np.asarray(bound(vae_arrays, sgm_arrays, jnp.asarray(pad), jax.random.fold_in(root, i)))[: len(x)])
    return np.concatenate(out)


def run_vaes(config, trainer, splits: dict, log=print) -> dict[str, Any]:
    """Train and evaluate every VAE of `config.vae.models` on the same test images.

    Metrics per kind: `vae/<kind>/test_iwlb` (mean over test images), `_se` (its standard error over images),
    `_median`, `valid_elbo`, `best_step` (checkpoint selection) and `stopped_step` (early stopping).
    """
    out: dict[str, Any] = {}
    test = splits["test"].images
    valid = splits["valid"].images if "valid" in splits else None
    sgm = SGMParts.from_trainer(trainer)
    for kind in config.vae.models:
        vae, info = train_vae(kind, config, sgm, splits["train"].images, valid, config.seed + 1000, log=log)
        values = score_images(kind, vae, sgm, test, config.vae.iw_samples, config.seed + 2000)
        out[f"vae/{kind}/test_iwlb"] = float(values.mean())
        out[f"vae/{kind}/test_iwlb_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        out[f"vae/{kind}/test_iwlb_median"] = float(np.median(values))
        out[f"vae/{kind}/valid_elbo"] = info["valid_elbo"]
        out[f"vae/{kind}/best_step"] = info["best_step"]
        out[f"vae/{kind}/stopped_step"] = info["stopped_step"]
        log(f"{kind}: test bound {out[f'vae/{kind}/test_iwlb']:.1f} +- {out[f'vae/{kind}/test_iwlb_se']:.1f} nats "
            f"(median {out[f'vae/{kind}/test_iwlb_median']:.1f})")
    return out
