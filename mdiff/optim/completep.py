"""CompleteP-style per-module multipliers for width and depth transfer.

Complete(d)P as the tri-modal paper (arXiv 2602.21472) uses it (CompleteP with embedding eps 1 / m_N),
with m_N = width / width_base, m_L = depth / depth_base, and residual branches scaled by m_L^-alpha
(alpha in [1/2, 1]):

    class      lr                    AdamW eps              weight decay
    hidden     m_L^(alpha-1) / m_N   1 / (m_N m_L^alpha)    m_N
    output     m_L^(alpha-1) / m_N   1 / (m_N m_L^alpha)    m_N
    embedding  1                     1 / m_N                1
    vector     1                     1                      0   (norm gains, biases)

Vectors (norm gains, biases) never decay, with or without CompleteP. With `optim.completep=False`
every other multiplier is 1 and the residual multiplier is 1.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax

CLASSES = ("embedding", "hidden", "output", "vector")

# Path patterns, tried in order, on the '/'-joined parameter path (lower case).
_OUTPUT = re.compile(r"(^|/)(head|output|unembed|logits|lm_head|out_proj_vocab)(/|$)")
_EMBEDDING = re.compile(r"(^|/)[^/]*emb[^/]*(/|$)")


@dataclasses.dataclass(frozen=True)
class Multipliers:
    lr: float = 1.0
    eps: float = 1.0
    weight_decay: float = 1.0


def width_depth_ratios(model_width: int, model_depth: int, optim: Any) -> tuple[float, float]:
    return model_width / optim.width_base, model_depth / optim.depth_base


def class_multipliers(m_n: float, m_l: float, alpha: float, enabled: bool) -> dict[str, Multipliers]:
    """Multipliers per parameter class (the table in the module docstring)."""
    if not enabled:
        m_n, m_l = 1.0, 1.0
    matrix = Multipliers(lr=m_l ** (alpha - 1) / m_n, eps=1.0 / (m_n * m_l**alpha), weight_decay=m_n)
    return {
        "hidden": matrix,
        "output": matrix,
        "embedding": Multipliers(lr=1.0, eps=1.0 / m_n, weight_decay=1.0),
        "vector": Multipliers(lr=1.0, eps=1.0, weight_decay=0.0),
    }


def residual_multiplier(m_l: float, alpha: float, enabled: bool) -> float:
    """Scale of each residual branch, m_L^-alpha (1 when CompleteP is off)."""
    return m_l ** (-alpha) if enabled else 1.0


def path_name(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    if len(parts) > 1 and parts[-1] == "value":  # nnx.Variable leaves
        parts.pop()
    return "/".join(parts).lower()


def classify(name: str, ndim: int) -> str:
    """Parameter class from its path and rank: vectors, output head, embeddings, else hidden.

    Norm gains stacked over layers (scanned blocks) are still vectors: their last name says "norm".
    """
    if ndim <= 1 or "norm" in name.rsplit("/", 1)[-1]:
        return "vector"
    if _OUTPUT.search(name):
        return "output"
    if _EMBEDDING.search(name):
        return "embedding"
    return "hidden"


def label_tree(params: Any) -> Any:
    """A tree like `params` holding each leaf's class name (for optax.multi_transform)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: classify(path_name(p), len(x.shape)), params)
