"""Networks of the SGM (Flax NNX): MLP blocks and the prototype inference network q(eta | x).

MLP layer = Dense -> gelu -> LayerNorm (-> dropout), as in the paper (App. C). The inference network's mean head
is zero-initialised, so at initialisation it predicts the identity transform. q(eta | x) is a Gaussian in the
unconstrained space with a homoscedastic per-dimension sigma = softplus(sigma_raw) (init 0.01), pushed through
the bounds bijector; sigma_raw is a `NoiseScale` variable so it can get its own optimiser (digest §3.6).
A small CNN body is offered besides the paper's flattened-image MLP.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mdiff.symmetry.transforms import Bounds

ARCHS = ("mlp", "cnn")


class NoiseScale(nnx.Param):
    """The inference network's raw noise scale (optimised separately)."""


def dropout(x: jax.Array, rate: float, key) -> jax.Array:
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class MLP(nnx.Module):
    """Stack of Dense -> gelu -> LayerNorm -> dropout (dropout only when a key is given)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], rate: float = 0.0, *, rngs: nnx.Rngs):
        dims = (in_dim, *hidden)
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.norm = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in hidden])
        self.rate = float(rate)

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        keys = jax.random.split(key, len(self.dense)) if key is not None else [None] * len(self.dense)
        for dense, norm, k in zip(self.dense, self.norm, keys):
            x = dropout(norm(jax.nn.gelu(dense(x))), self.rate, k)
        return x


class CNN(nnx.Module):
    """Small conv body: 3x3 convs (stride 2 after the first), gelu, LayerNorm, then flatten -> MLP."""

    def __init__(self, image_shape: tuple[int, int, int], features: tuple[int, ...], hidden: tuple[int, ...],
                 *, rngs: nnx.Rngs):
        h, w, c = image_shape
        chans = (c, *features)
        self.convs = nnx.List([
            nnx.Conv(a, b, (3, 3), strides=(2, 2) if i else (1, 1), rngs=rngs)
            for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))
        ])
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in features])
        for _ in features[1:]:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.mlp = MLP(h * w * features[-1], hidden, rngs=rngs)

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        for conv, norm in zip(self.convs, self.norms):
            x = norm(jax.nn.gelu(conv(x)))
        return self.mlp(x.reshape(x.shape[0], -1), key=key)


def inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class InferenceNet(nnx.Module):
    """q(eta | x): eta = bounds(u), u ~ N(mu(x), sigma) with sigma shared over inputs."""

    def __init__(self, image_shape: tuple[int, int, int], bounds: Bounds, *, arch: str = "mlp",
                 hidden: tuple[int, ...] = (2048, 1024, 512, 256), conv_features: tuple[int, ...] = (32, 64),
                 sigma_init: float = 0.01, rngs: nnx.Rngs):
        if arch not in ARCHS:
            raise ValueError(f"inference arch {arch!r}: known are {ARCHS}")
        self.bounds = bounds
        dim = len(bounds.scale)
        if arch == "mlp":
            self.body = MLP(math.prod(image_shape), hidden, rngs=rngs)
        else:
            self.body = CNN(tuple(image_shape), conv_features, hidden, rngs=rngs)
        self.arch = arch
        self.head = nnx.Linear(hidden[-1], dim, kernel_init=nnx.initializers.zeros,
                               bias_init=nnx.initializers.zeros, rngs=rngs)
        self.sigma_raw = NoiseScale(jnp.full((dim,), inv_softplus(sigma_init), jnp.float32))

    def sigma(self) -> jax.Array:
        return jax.nn.softplus(self.sigma_raw[...])

    def mean_u(self, x: jax.Array) -> jax.Array:
        feats = self.body(x.reshape(x.shape[0], -1) if self.arch == "mlp" else x)
        return self.head(feats)

    def sample(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """One reparameterised eta per image, [B, dim]."""
        mu = self.mean_u(x)
        return self.bounds.to_eta(mu + self.sigma() * jax.random.normal(key, mu.shape))

    def sample_with_log_prob(self, key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """eta ~ q(eta | x) and log q(eta | x) (including the bounds Jacobian)."""
        mu = self.mean_u(x)
        sigma = self.sigma()
        eps = jax.random.normal(key, mu.shape)
        u = mu + sigma * eps
        log_u = jnp.sum(-0.5 * eps**2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi), axis=-1)
        return self.bounds.to_eta(u), log_u - self.bounds.log_det(u)

    def mode(self, x: jax.Array) -> jax.Array:
        return self.bounds.to_eta(self.mean_u(x))
