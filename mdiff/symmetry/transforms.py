"""Affine and colour transformations of images, parameterised by eta.

Conventions (as in the SGM paper's reference code, digest §2):

* Images are ``[H, W, C]`` (or batched ``[B, H, W, C]``) floats in ``[-1, 1]``; ``-1`` is background, and
  content moved in from outside the frame is filled with ``cval`` (default ``-1``).
* Affine eta = (shift x, shift y, rotation [rad], log-scale x, log-scale y[, shear]); the 3x3 *grid* matrix is
  ``expm(sum_i eta_i G_i)`` (one Lie-algebra element, not a product of exponentials). Coordinates are
  normalised to ``[-1, 1]`` on both axes with pixel centres at the ends (align-corners), so a shift of 0.25 moves
  content by 1/8 of the width.
* The grid matrix maps output pixel positions to source positions (spatial-transformer style), so the visible
  content moves by its inverse. Doing image-op ``a`` first and then ``b`` is the grid matrix ``A_a @ A_b``
  (`compose(a, b)`); transforms are composed into one matrix and applied with a *single* warp to limit blur.
* Colour eta = (hue shift [turns], log saturation factor, log value factor), applied in HSV:
  ``h' = (h + eta_h) mod 1``, ``s' = clip(s e^{eta_s})``, ``v' = clip(v e^{eta_v})`` with a clip that passes the
  gradient through unchanged (the paper found this essential). Colour transforms compose by adding eta
  (exact up to clipping) and invert by negating it.
* A combined transform applies the colour part first, then the warp (the reference code's order).

Interpolation: ``order=1`` bilinear, ``order=3`` bicubic. Choice (paper vs code): the reference code uses a
cubic *B-spline* (prefiltered) interpolator; we use Keys' cubic-convolution kernel (a = -0.5), which is
interpolating without a prefilter solve, differentiable in the sample positions, exact at pixel centres, and
the usual meaning of "bicubic" in image libraries. Both are third order; the paper's argument (bicubic + one
composed warp = little blur) holds for either.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdiff.errors import InputError

AFFINE_NAMES = ("shift_x", "shift_y", "rotation", "log_scale_x", "log_scale_y")
SHEAR_NAME = "shear"
COLOUR_NAMES = ("hue", "log_saturation", "log_value")
FAMILIES = ("affine", "affine_shear", "hsv", "affine_hsv")
ORDERS = (1, 3)


class TransformError(InputError):
    """Input a transform cannot handle: image shape, channel count, eta length or NaN values."""


# ---------------------------------------------------------------------------------------------
# A transform value: one grid matrix and one colour shift (identity = eye(3), zeros(3))
# ---------------------------------------------------------------------------------------------
class Transform(NamedTuple):
    matrix: jax.Array  # [..., 3, 3] grid matrix
    colour: jax.Array  # [..., 3] (hue turns, log saturation, log value)


def identity(batch_shape: tuple[int, ...] = ()) -> Transform:
    return Transform(jnp.broadcast_to(jnp.eye(3), (*batch_shape, 3, 3)), jnp.zeros((*batch_shape, 3)))


def compose(*transforms: Transform) -> Transform:
    """The image operation 'apply transforms[0], then transforms[1], ...' as a single transform."""
    matrix, colour = transforms[0]
    for t in transforms[1:]:
        matrix = matrix @ t.matrix
        colour = colour + t.colour
    return Transform(matrix, colour)


def inverse(t: Transform) -> Transform:
    return Transform(jnp.linalg.inv(t.matrix), -t.colour)


# ---------------------------------------------------------------------------------------------
# Affine: generators, expm
# ---------------------------------------------------------------------------------------------
def affine_generators(shear: bool = False) -> np.ndarray:
    """[5 or 6, 3, 3] Lie-algebra generators in eta order (grid convention)."""
    g = np.zeros((6, 3, 3), np.float32)
    g[0, 0, 2] = 1.0  # shift x
    g[1, 1, 2] = 1.0  # shift y
    g[2, 1, 0], g[2, 0, 1] = 1.0, -1.0  # rotation
    g[3, 0, 0] = 1.0  # log-scale x
    g[4, 1, 1] = 1.0  # log-scale y
    g[5, 0, 1] = g[5, 1, 0] = 1.0  # symmetric shear
    return g if shear else g[:5]


def affine_matrix(eta: jax.Array) -> jax.Array:
    """expm(sum_i eta_i G_i) for eta [..., 5] (no shear) or [..., 6] (with shear) -> [..., 3, 3]."""
    eta = jnp.asarray(eta, jnp.float32)
    if eta.shape[-1] not in (5, 6):
        raise TransformError(f"affine eta has {eta.shape[-1]} entries; expected 5 (no shear) or 6 (with shear)")
    gens = jnp.asarray(affine_generators(eta.shape[-1] == 6))
    algebra = jnp.einsum("...k,kij->...ij", eta, gens)
    flat = algebra.reshape(-1, 3, 3)
    return jax.vmap(jax.scipy.linalg.expm)(flat).reshape(algebra.shape)


# ---------------------------------------------------------------------------------------------
# Warping
# ---------------------------------------------------------------------------------------------
def _check_image(image: jax.Array, batched: bool) -> None:
    want = 4 if batched else 3
    if image.ndim != want:
        layout = "[B, H, W, C]" if batched else "[H, W, C]"
        raise TransformError(f"image shape {tuple(image.shape)}: expected {layout}")
    h, w, c = image.shape[-3:]
    if h < 4 or w < 4:
        raise TransformError(f"image shape {tuple(image.shape)}: height and width must be >= 4")
    if c not in (1, 3):
        raise TransformError(f"image shape {tuple(image.shape)}: {c} channels; supported are 1 (grey) and 3 (RGB)")


def _keys_cubic(t: jax.Array, a: float = -0.5) -> jax.Array:
    t = jnp.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return jnp.where(t <= 1, near, jnp.where(t < 2, far, 0.0))


def _taps(coord: jax.Array, order: int) -> tuple[jax.Array, jax.Array]:
    """Integer sample indices [..., n] and their weights [..., n] along one axis."""
    base = jnp.floor(jax.lax.stop_gradient(coord))
    offsets = jnp.arange(0, 2) if order == 1 else jnp.arange(-1, 3)
    idx = base[..., None] + offsets
    dist = coord[..., None] - idx
    weights = jnp.maximum(1 - jnp.abs(dist), 0.0) if order == 1 else _keys_cubic(dist)
    return idx.astype(jnp.int32), weights


def sample(image: jax.Array, rows: jax.Array, cols: jax.Array, *, order: int = 3, cval: float = -1.0) -> jax.Array:
    """Interpolate `image` [H, W, C] at fractional pixel positions rows/cols [...] -> [..., C]."""
    h, w, _ = image.shape
    ri, rw = _taps(rows, order)
    ci, cw = _taps(cols, order)
    valid = ((ri >= 0) & (ri < h))[..., :, None] & ((ci >= 0) & (ci < w))[..., None, :]
    values = image[jnp.clip(ri, 0, h - 1)[..., :, None], jnp.clip(ci, 0, w - 1)[..., None, :]]  # [..., n, n, C]
    values = jnp.where(valid[..., None], values, cval)
    weights = rw[..., :, None] * cw[..., None, :]
    return jnp.einsum("...ij,...ijc->...c", weights, values)


def warp(image: jax.Array, matrix: jax.Array, *, order: int = 3, cval: float = -1.0) -> jax.Array:
    """Resample one image [H, W, C] on the grid transformed by the 3x3 grid `matrix`."""
    if order not in ORDERS:
        raise TransformError(f"interpolation order {order!r}: supported are {ORDERS} (bilinear, bicubic)")
    _check_image(image, batched=False)
    h, w, _ = image.shape
    ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
    grid = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1)  # [H, W, 3] (x, y, 1)
    src = jnp.einsum("ij,hwj->hwi", matrix[:2], grid)
    cols = (src[..., 0] + 1) * 0.5 * (w - 1)
    rows = (src[..., 1] + 1) * 0.5 * (h - 1)
    return sample(image, rows, cols, order=order, cval=cval)


# ---------------------------------------------------------------------------------------------
# Colour (HSV)
# ---------------------------------------------------------------------------------------------
@jax.custom_jvp
def passthrough_clip(x: jax.Array) -> jax.Array:
    """clip(x, 0, 1) whose derivative is 1 everywhere (gradients flow through saturated pixels)."""
    return jnp.clip(x, 0.0, 1.0)


@passthrough_clip.defjvp
def _passthrough_clip_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return passthrough_clip(x), dx


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (hue in turns). Safe gradients at grey pixels."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    delta = value - jnp.min(rgb, axis=-1)
    safe_v = jnp.where(value > 0, value, 1.0)
    safe_d = jnp.where(delta > 0, delta, 1.0)
    sat = jnp.where(value > 0, delta / safe_v, 0.0)
    hue = jnp.where(
        value == r,
        jnp.mod((g - b) / safe_d, 6.0),
        jnp.where(value == g, (b - r) / safe_d + 2.0, (r - g) / safe_d + 4.0),
    )
    hue = jnp.where(delta > 0, hue / 6.0, 0.0)
    return jnp.stack([jnp.mod(hue, 1.0), sat, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + h * 6.0, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def colour_shift(image: jax.Array, colour: jax.Array) -> jax.Array:
    """Apply (hue, log-sat, log-value) to an RGB image in [-1, 1] (order: saturation, hue, value)."""
    if image.shape[-1] != 3:
        raise TransformError(f"image shape {tuple(image.shape)}: colour transforms need 3 (RGB) channels")
    hsv = rgb_to_hsv((image + 1.0) * 0.5)
    sat = passthrough_clip(hsv[..., 1] * jnp.exp(colour[1]))
    hue = jnp.mod(hsv[..., 0] + colour[0], 1.0)
    val = passthrough_clip(hsv[..., 2] * jnp.exp(colour[2]))
    return hsv_to_rgb(jnp.stack([hue, sat, val], axis=-1)) * 2.0 - 1.0


# ---------------------------------------------------------------------------------------------
# Families: eta <-> Transform, and applying a Transform to images
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Family:
    """A transformation family: which eta entries exist and what they do."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in FAMILIES:
            raise TransformError(f"transform family {self.name!r}: known are {FAMILIES}")

    @property
    def has_affine(self) -> bool:
        return self.name != "hsv"

    @property
    def has_colour(self) -> bool:
        return self.name in ("hsv", "affine_hsv")

    @property
    def names(self) -> tuple[str, ...]:
        affine = AFFINE_NAMES + ((SHEAR_NAME,) if self.name == "affine_shear" else ())
        return (affine if self.has_affine else ()) + (COLOUR_NAMES if self.has_colour else ())

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def n_affine(self) -> int:
        return 0 if not self.has_affine else (6 if self.name == "affine_shear" else 5)

    def check_eta(self, eta: jax.Array) -> None:
        if eta.shape[-1:] != (self.dim,):
            raise TransformError(
                f"eta shape {tuple(eta.shape)}: the {self.name!r} family needs a last axis of {self.dim} "
                f"({', '.join(self.names)})"
            )

    def transform(self, eta: jax.Array) -> Transform:
        """eta [..., dim] -> Transform with batch shape [...]."""
        eta = jnp.asarray(eta, jnp.float32)
        self.check_eta(eta)
        if not isinstance(eta, jax.core.Tracer):  # concrete input from a user: NaN/inf is an error, not a blank image
            check_finite_eta(eta)
        batch = eta.shape[:-1]
        base = identity(batch)
        matrix = affine_matrix(eta[..., : self.n_affine]) if self.has_affine else base.matrix
        colour = eta[..., self.n_affine :] if self.has_colour else base.colour
        return Transform(matrix, colour)

    def check_image(self, images: jax.Array, batched: bool = True) -> None:
        _check_image(images, batched)
        if self.has_colour and images.shape[-1] != 3:
            raise TransformError(
                f"image shape {tuple(images.shape)}: the {self.name!r} family needs RGB images (3 channels)"
            )

    def apply(self, images: jax.Array, t: Transform, *, order: int = 3, cval: float = -1.0) -> jax.Array:
        """Apply a batch of transforms t (batch [B]) to images [B, H, W, C]: colour first, then one warp."""
        self.check_image(images)

        def one(image: jax.Array, matrix: jax.Array, colour: jax.Array) -> jax.Array:
            if self.has_colour:
                image = colour_shift(image, colour)
            if self.has_affine:
                image = warp(image, matrix, order=order, cval=cval)
            return image

        return jax.vmap(one)(images, t.matrix, t.colour)

    def apply_eta(self, images: jax.Array, eta: jax.Array, **kw) -> jax.Array:
        return self.apply(images, self.transform(eta), **kw)


# ---------------------------------------------------------------------------------------------
# Bounds: eta = offset + scale * (tanh(u) if squash else u)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bounds:
    """Maps unconstrained u to eta; also the range of the uniform augmentation distribution."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    squash: bool

    @classmethod
    def create(cls, family: Family, scale, offset=(), squash: bool = False) -> "Bounds":
        scale = tuple(float(s) for s in scale)
        offset = tuple(float(o) for o in offset) or (0.0,) * len(scale)
        if len(scale) != family.dim:
            raise TransformError(
                f"bounds {scale}: {len(scale)} entries, the {family.name!r} family needs {family.dim} "
                f"({', '.join(family.names)})"
            )
        if len(offset) != family.dim:
            raise TransformError(f"bounds offset {offset}: {len(offset)} entries, expected {family.dim}")
        if any(not np.isfinite(s) or s <= 0 for s in scale):
            raise TransformError(f"bounds {scale}: every entry must be finite and > 0")
        return cls(scale, offset, bool(squash))

    def _arrays(self) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(self.scale, jnp.float32), jnp.asarray(self.offset, jnp.float32)

    def to_eta(self, u: jax.Array) -> jax.Array:
        scale, offset = self._arrays()
        return offset + scale * (jnp.tanh(u) if self.squash else u)

    def to_unconstrained(self, eta: jax.Array, eps: float = 1e-6) -> jax.Array:
        scale, offset = self._arrays()
        y = (eta - offset) / scale
        return jnp.arctanh(jnp.clip(y, -1 + eps, 1 - eps)) if self.squash else y

    def log_det(self, u: jax.Array) -> jax.Array:
        """log |d eta / d u| summed over the last axis."""
        scale, _ = self._arrays()
        out = jnp.sum(jnp.log(scale)) * jnp.ones(u.shape[:-1])
        if self.squash:  # log(1 - tanh(u)^2), written stably
            out = out + jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
        return out

    def sample_uniform(self, key: jax.Array, shape: tuple[int, ...], mult: float = 1.0) -> jax.Array:
        """eta ~ U(offset - mult*scale, offset + mult*scale), independent per dimension."""
        scale, offset = self._arrays()
        unit = jax.random.uniform(key, (*shape, len(self.scale)), minval=-1.0, maxval=1.0)
        return offset + mult * scale * unit


def check_finite_eta(eta) -> None:
    """Raise a clear error for NaN/inf eta given by a user (outside jit)."""
    arr = np.asarray(eta)
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise TransformError(f"eta contains {bad} non-finite value(s) (NaN or inf); eta must be finite")


def gaussian_blur(images: jax.Array, sigma: jax.Array, size: int = 5, cval: float = -1.0) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] with padding value cval; sigma -> 0 is the identity."""
    half = size // 2
    offsets = jnp.arange(-half, half + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / kernel.sum()
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (half, half), (half, half), (0, 0)), constant_values=cval)
    rows = sum(kernel[i] * padded[:, i : i + h, :, :] for i in range(size))
    return sum(kernel[i] * rows[:, :, i : i + w, :] for i in range(size))
