"""Text-to-image metrics: a classifier trained on real images judges whether an image matches its prompt,
and a Frechet distance compares real and generated images in that classifier's hidden-feature space.

Digits: the class is the digit. Emoji: the class is the caption (one image per emoji, so the judge
is trained on shifted / noised copies of each real image and scored on prompts it was trained on).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

JUDGE_SIDE = 16  # images are resized to JUDGE_SIDE^2 grey + a coarse colour histogram before judging


def image_features(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, F] float: a grey JUDGE_SIDE^2 thumbnail plus mean colour per channel."""
    from PIL import Image

    images = np.asarray(images)
    out = []
    for img in images:
        pil = Image.fromarray(np.asarray(img, np.uint8))
        grey = np.asarray(pil.convert("L").resize((JUDGE_SIDE, JUDGE_SIDE), Image.Resampling.BILINEAR), np.float32) / 255.0
        colour = np.asarray(img, np.float32).reshape(-1, 3).mean(0) / 255.0
        out.append(np.concatenate([grey.reshape(-1), colour]))
    return np.stack(out) if out else np.zeros((0, JUDGE_SIDE * JUDGE_SIDE + 3), np.float32)


def augment(images: np.ndarray, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`copies` randomly shifted (up to 1/8 of the side) and noised versions of each image; returns (images, source index)."""
    rng = np.random.default_rng(seed)
    images = np.asarray(images)
    n, h, w, _ = images.shape
    out, index = [], []
    for c in range(copies):
        for i in range(n):
            img = images[i].astype(np.float32)
            if c:
                dy, dx = rng.integers(-(h // 8), h // 8 + 1), rng.integers(-(w // 8), w // 8 + 1)
                img = np.roll(img, (dy, dx), axis=(0, 1))
                img = img + rng.normal(0, 12.0, img.shape)
            out.append(np.clip(img, 0, 255).astype(np.uint8))
            index.append(i)
    return np.stack(out), np.array(index)


@dataclasses.dataclass
class ImageJudge:
    """An MLP classifier over `image_features`; its hidden layer is the feature space for the FD."""

    classes: list[str]
    model: object

    @classmethod
    def fit(cls, images: np.ndarray, labels: Sequence[str], *, copies: int = 1, seed: int = 0, hidden: int = 64) -> "ImageJudge":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        if copies > 1:
            images, index = augment(images, copies, seed)
            labels = [labels[i] for i in index]
        classes = sorted(set(labels))
        lookup = {c: i for i, c in enumerate(classes)}
        y = np.array([lookup[c] for c in labels])
        # L-BFGS: fast and deterministic on a few thousand small images.
        model = MLPClassifier(hidden_layer_sizes=(hidden,), solver="lbfgs", max_iter=300, random_state=seed, alpha=1e-2)
        features = image_features(images)
        # One BLAS thread: these small matrices fit 20x slower when threads fight over a busy CPU.
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration cap is deliberate
            model.fit(features, y)
        return cls(classes, model)

    def predict(self, images: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.model.predict(image_features(images))]

    def accuracy(self, images: np.ndarray, labels: Sequence[str]) -> float:
        """Fraction of images classified as their prompt's label (labels unknown to the judge count as wrong)."""
        if len(labels) == 0:
            return float("nan")
        return float(np.mean([p == t for p, t in zip(self.predict(images), labels, strict=True)]))

    def features(self, images: np.ndarray) -> np.ndarray:
        """Hidden-layer (ReLU) activations: the space the Frechet distance is measured in."""
        x = image_features(images)
        return np.maximum(x @ self.model.coefs_[0] + self.model.intercepts_[0], 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets [N, F]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least two feature vectors on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # A tiny ridge keeps sqrtm well defined when features are degenerate (dead ReLUs, few samples).
    ridge = 1e-9 * max(np.trace(cov_a) + np.trace(cov_b), 1e-12) * np.eye(len(cov_a))
    covmean = np.real(linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge)))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
