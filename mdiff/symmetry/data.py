"""Offline image sets for the SGM, all rendered or loaded locally (no downloads).

* ``digits``: scikit-learn's 1,797 8x8 digits, upsampled so the digit fills a 20/28 box centred in the frame
  (like MNIST), values in [-1, 1] with background -1.
* ``dsprites``: procedural dSprites-like shapes (square, ellipse, heart). ``render="paper"`` draws the position,
  scale and orientation from the per-shape latent distributions of the SGM paper's modified dSprites (digest
  §6.1; TruncNorm scales are standard deviations, as in the code); ``render="canonical"`` draws every shape
  centred, upright, at unit scale, so the only variation is the known transform below.
* ``emoji``: Noto colour emoji (fonts-noto-color-emoji) rendered with PIL onto black, RGB.

Each set can be transformed once per example by a KNOWN eta distribution (fixed, not re-drawn per epoch, like
the paper's "added rotation"): eta_i ~ U(-half_width * s_c, half_width * s_c) independently per dimension, where
``s_c`` is the class's entry of ``class_scale`` (cycled over classes). The applied eta is returned as
``eta_true`` so tests can compare what the SGM learns with what was put in.

Splits (`load`): the test images are the same for every seed and every training-set size (like MNIST's fixed
test split), so bounds measured at different sizes and seeds score the same pixels; the validation images
depend on the seed but not on `num_train`; the training images are the first `num_train` of a seed's stream,
so a larger training set contains the smaller one.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

from mdiff.symmetry.transforms import Family

DATASETS = ("digits", "dsprites", "emoji")
SHAPES = ("square", "ellipse", "heart")
EMOJI_FONT = pathlib.Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


@dataclasses.dataclass
class ImageSet:
    images: np.ndarray  # [N, H, W, C] float32 in [-1, 1]
    labels: np.ndarray  # [N] int32 class (digit, shape, emoji index)
    eta_true: np.ndarray  # [N, dim] the known transform applied (zeros when none)
    latents: dict  # generator latents (dSprites), may be empty

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.eta_true[idx],
                        {k: v[idx] for k, v in self.latents.items()})


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------
def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of [N, h, w, C] to [N, size, size, C] (jax.image), values kept in range."""
    out = jax.image.resize(jnp.asarray(images), (images.shape[0], size, size, images.shape[-1]), "cubic")
    return np.asarray(out)


def load_digits(image_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    base = (d.images.astype(np.float32) / 16.0)[..., None]  # [N, 8, 8, 1] in [0, 1]
    box = max(4, round(image_size * 20 / 28))
    small = np.clip(_resize(base, box), 0.0, 1.0)
    pad = (image_size - box) // 2
    full = np.zeros((len(base), image_size, image_size, 1), np.float32)
    full[:, pad : pad + box, pad : pad + box] = small
    return full * 2 - 1, d.target.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# dSprites-like shapes
# ---------------------------------------------------------------------------------------------
def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in the shape's own frame (unit scale ~ half-width 1)."""
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
    x, y = u * 1.2, -v * 1.2 + 0.15  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, point down in image rows
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def render_shape(shape: str, size: int, x: float, y: float, scale: float, angle: float, ss: int = 3) -> np.ndarray:
    """One anti-aliased sprite in [0, 1], [size, size]; (x, y) in [0, 1] frame units, angle in radians."""
    coords = (np.arange(size * ss) + 0.5) / (size * ss)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx, dy = xx - x, yy - y
    c, s = np.cos(angle), np.sin(angle)
    radius = 0.18 * scale  # sprite half-width in frame units at scale 1
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    mask = _inside(shape, u, v).astype(np.float32)
    return mask.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _truncnorm(u: np.ndarray, mean: float, std: float, lo: float, hi: float) -> np.ndarray:
    """TruncNorm(mean, std, [lo, hi]) by the inverse CDF of uniforms u in [0, 1)."""
    from scipy.stats import truncnorm

    return truncnorm.ppf(u, (lo - mean) / std, (hi - mean) / std, loc=mean, scale=std)


def paper_latents(shape: str, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-shape latent distributions of the SGM paper's dSprites (orientation, scale, x, y).

    Every value is a transform of one row of an [n, 5] uniform draw, so the first k of n examples equal k draws.
    """
    u = rng.uniform(size=(n, 5)).T

    def lin(col, lo, hi):
        return lo + (hi - lo) * u[col]

    if shape == "square":
        return dict(angle=lin(0, 0, 2 * np.pi), scale=_truncnorm(u[1], 0.75, 0.2, 0.55, 1.0),
                    x=lin(2, 0.5, 0.95), y=lin(3, 0.5, 0.95))
    if shape == "ellipse":
        return dict(angle=lin(0, 0, np.pi / 2), scale=_truncnorm(u[1], 0.65, 0.15, 0.5, 0.85),
                    x=_truncnorm(u[2], 0.5, 0.25, 0.1, 0.9), y=_truncnorm(u[3], 0.5, 0.15, 0.35, 0.65))
    top = u[4] < 0.5
    return dict(angle=np.zeros(n), scale=lin(1, 0.9, 1.0), x=lin(2, 0.1, 0.5),
                y=np.where(top, lin(3, 0.1, 0.3), lin(3, 0.7, 0.9)))


def load_dsprites(n: int, image_size: int, shapes: tuple[str, ...], render: str, seed: int | list[int]):
    stream = [*np.atleast_1d(seed).tolist(), 17]
    labels = np.random.default_rng(stream).integers(0, len(shapes), n).astype(np.int32)
    lat = {k: np.zeros(n) for k in ("angle", "scale", "x", "y")}
    for c, shape in enumerate(shapes):
        idx = np.flatnonzero(labels == c)
        if render == "paper":  # every example's latents drawn from its shape's own stream: prefix-stable in n
            for k, v in paper_latents(shape, np.random.default_rng([*stream, c + 1]), n).items():
                lat[k][idx] = v[idx]
        else:
            lat["angle"][idx], lat["scale"][idx], lat["x"][idx], lat["y"][idx] = 0.0, 1.0, 0.5, 0.5
    images = np.stack([
        render_shape(shapes[labels[i]], image_size, lat["x"][i], lat["y"][i], 1.6 * lat["scale"][i], lat["angle"][i])
        for i in range(n)
    ])[..., None]
    return images.astype(np.float32) * 2 - 1, labels, lat


# ---------------------------------------------------------------------------------------------
# emoji
# ---------------------------------------------------------------------------------------------
def emoji_characters(count: int) -> list[str]:
    """The first `count` named single-codepoint emoji from the animal, food and face blocks (varied colours)."""
    blocks = list(range(0x1F400, 0x1F440)) + list(range(0x1F345, 0x1F37F)) + list(range(0x1F600, 0x1F650))
    chars = [chr(cp) for cp in blocks if unicodedata.name(chr(cp), "")]
    if count > len(chars):
        raise ValueError(f"data.num_classes={count}: at most {len(chars)} emoji are available")
    return chars[:count]


@functools.lru_cache(maxsize=4)
def render_emoji(count: int, image_size: int) -> np.ndarray:
    """[count, size, size, 3] in [-1, 1]: emoji composited over black, resized with antialiasing."""
    from PIL import Image, ImageDraw, ImageFont

    if not EMOJI_FONT.exists():
        raise FileNotFoundError(f"{EMOJI_FONT} not found; install the Debian package fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the CBDT font only has this bitmap size
    out = []
    for ch in emoji_characters(count):
        canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((80, 80), ch, font=font, embedded_color=True, anchor="mm")
        box = canvas.getbbox() or (0, 0, 160, 160)
        crop = canvas.crop(box)
        side = max(crop.size)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
        inner = max(4, round(image_size * 0.75))
        small = square.resize((inner, inner), Image.LANCZOS)
        frame = Image.new("RGB", (image_size, image_size), (0, 0, 0))
        off = (image_size - inner) // 2
        frame.paste(small, (off, off), small)
        out.append(np.asarray(frame, np.float32) / 255.0)
    return np.stack(out) * 2 - 1


def load_emoji(n: int, image_size: int, num_classes: int, seed: int | list[int]):
    base = render_emoji(num_classes, image_size)
    labels = np.random.default_rng([*np.atleast_1d(seed).tolist(), 29]).integers(0, num_classes, n).astype(np.int32)
    return base[labels], labels


# ---------------------------------------------------------------------------------------------
# Known transforms and splits
# ---------------------------------------------------------------------------------------------
def known_eta(labels: np.ndarray, half_width, class_scale, seed: int | list[int], dim: int) -> np.ndarray:
    """eta_i ~ U(-hw * s_c, hw * s_c) per dimension; zeros when half_width is empty."""
    if not half_width:
        return np.zeros((len(labels), dim), np.float32)
    hw = np.asarray(half_width, np.float32)
    scales = np.asarray(class_scale or (1.0,), np.float32)
    s = scales[labels % len(scales)][:, None]
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 41])
    return (rng.uniform(-1, 1, (len(labels), dim)) * hw * s).astype(np.float32)


def apply_known(images: np.ndarray, eta: np.ndarray, family: Family, chunk: int = 256) -> np.ndarray:
    """Apply each example's eta once (bicubic, fill -1), in chunks to bound memory."""
    if not np.any(eta):
        return images
    fn = jax.jit(lambda x, e: jnp.clip(family.apply_eta(x, e, order=3), -1.0, 1.0))
    return np.concatenate([np.asarray(fn(images[i : i + chunk], eta[i : i + chunk]))
                           for i in range(0, len(images), chunk)])


TEST_SEED = 0  # the test split is drawn with this seed whatever the run's seed
SPLITS = ("test", "valid", "train")


def _split_sizes(data_cfg) -> dict[str, int]:
    return {"test": data_cfg.num_test, "valid": data_cfg.num_valid, "train": data_cfg.num_train}


def _digits_indices(data_cfg, seed: int, n_all: int) -> dict[str, np.ndarray]:
    """Test: a fixed slice of a fixed permutation; valid then train: a seed's permutation of the rest."""
    sizes = _split_sizes(data_cfg)
    if sum(sizes.values()) > n_all:
        raise ValueError(
            f"config.data num_train + num_valid + num_test = {sum(sizes.values())}: digits has only {n_all} images"
        )
    fixed = np.random.default_rng([TEST_SEED, 3]).permutation(n_all)
    test, rest = fixed[: sizes["test"]], fixed[sizes["test"] :]
    rest = rest[np.random.default_rng([seed, 3]).permutation(len(rest))]
    return {"test": test, "valid": rest[: sizes["valid"]],
            "train": rest[sizes["valid"] : sizes["valid"] + sizes["train"]]}


def _load_split(data_cfg, family: Family, split: str, seed: int, digits=None) -> ImageSet:
    """One split, from its own random stream ([seed, split index]), so it does not move with the others' sizes."""
    n = _split_sizes(data_cfg)[split]
    stream = [TEST_SEED if split == "test" else seed, SPLITS.index(split)]
    latents: dict = {}
    if data_cfg.name == "digits":
        images, labels = digits
    elif data_cfg.name == "dsprites":
        images, labels, latents = load_dsprites(n, data_cfg.image_size, tuple(data_cfg.shapes), data_cfg.render,
                                                stream)
    elif data_cfg.name == "emoji":
        images, labels = load_emoji(n, data_cfg.image_size, data_cfg.num_classes, stream)
    else:
        raise ValueError(f"config.data.name={data_cfg.name!r}: known are {DATASETS}")
    eta = known_eta(labels, tuple(data_cfg.known_half_width), tuple(data_cfg.known_class_scale), stream, family.dim)
    images = apply_known(images.astype(np.float32), eta, family)
    return ImageSet(images.astype(np.float32), labels, eta, {k: np.asarray(v) for k, v in latents.items()})


def load(data_cfg, family: Family, seed: int) -> dict[str, ImageSet]:
    """Build the train / valid / test splits described by `config.data` (see the module docstring)."""
    if data_cfg.name not in DATASETS:
        raise ValueError(f"config.data.name={data_cfg.name!r}: known are {DATASETS}")
    digits = {}
    if data_cfg.name == "digits":
        images, labels = load_digits(data_cfg.image_size)
        digits = {split: (images[idx], labels[idx]) for split, idx in _digits_indices(data_cfg, seed, len(images)).items()}
    return {split: _load_split(data_cfg, family, split, seed, digits.get(split)) for split in ("train", "valid", "test")}
