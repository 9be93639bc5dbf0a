"""CompleteP-style per-module multipliers for width and depth transfer.

Complete(d)P as the tri-modal paper (arXiv 2602.21472) uses it: the rules of its precursor
(Complete(d)P: CompleteP, Dey et al. 2025, plus fixes such as embedding eps 1/m_N), with
m_N = width / width_base, m_L = depth / depth_base and every residual branch scaled by m_L^-alpha
(alpha in [1/2, 1]):

    class      lr                   AdamW eps            per-step decay   lambda (coupled)  lambda (decoupled)
    hidden     m_L^(alpha-1) / m_N  1 / (m_N m_L^alpha)  m_L^(alpha-1)    m_N               m_L^(alpha-1)
    output     m_L^(alpha-1) / m_N  1 / (m_N m_L^alpha)  m_L^(alpha-1)    m_N               m_L^(alpha-1)
    embedding  1                    1 / m_N              1                1                 1
    vector     1                    1                    0                0                 0

Weight decay. The paper states its rule (lambda x m_N for matrices) for PyTorch/optax AdamW, whose
decay is *coupled* to the learning rate: each step shrinks a weight by lr * lambda, and with the lr's
1/m_N that per-step shrink does not change with width. The rule is about that shrink, so for the
*decoupled* (Loshchilov-Hutter) form, where a step shrinks a weight by lambda times the schedule's
shape (not by the peak lr), lambda keeps the per-step value and is not multiplied by m_N (that would
make the shrink grow with width: 4x at m_N = 4). `Multipliers.decay_per_step` holds the shrink's
multiplier; `lambda_multiplier` converts it for either form.

Initialisation. Hidden matrices start with std 1/sqrt(fan_in) (muP and SP agree there). The output
head's 1/m_N multiplier is folded into its learning rate (above) and its initialisation, as the
paper does to keep the head a plain matmul: std 1/sqrt(fan_in) * 1/sqrt(m_N) = 1/(m_N sqrt(width_base))
(`head_init_scale`), so logits start at O(1/sqrt(m_N)) and their updates stay O(1) in width.
Embeddings keep std 1 (width-independent coordinates).

Vectors (norm gains, biases) never decay, with or without CompleteP. With `optim.completep=False`
every other multiplier is 1, the residual multiplier is 1 and the head uses the 1/sqrt(fan_in) init:
the standard parameterisation (SP).
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
    decay_per_step: float = 1.0  # multiplier of the per-step shrink lr * lambda (the rule's invariant)

    def lambda_multiplier(self, decoupled: bool) -> float:
        """Multiplier of lambda itself: coupled decay is multiplied by the lr, decoupled is not."""
        return self.decay_per_step if decoupled else self.decay_per_step / self.lr


def width_depth_ratios(model_width: int, model_depth: int, optim: Any) -> tuple[float, float]:
    return model_width / optim.width_base, model_depth / optim.depth_base


def class_multipliers(m_n: float, m_l: float, alpha: float, enabled: bool) -> dict[str, Multipliers]:
    """Multipliers per parameter class (the table in the module docstring)."""
    if not enabled:
        m_n, m_l = 1.0, 1.0
    matrix = Multipliers(lr=m_l ** (alpha - 1) / m_n, eps=1.0 / (m_n * m_l**alpha), decay_per_step=m_l ** (alpha - 1))
    return {
        "hidden": matrix,
        "output": matrix,
        "embedding": Multipliers(lr=1.0, eps=1.0 / m_n, decay_per_step=1.0),
        "vector": Multipliers(lr=1.0, eps=1.0, decay_per_step=0.0),
    }


def head_init_scale(m_n: float, enabled: bool) -> float:
    """Factor on the head's 1/sqrt(fan_in) init std: 1/sqrt(m_N) under CompleteP, 1 under SP."""
    return m_n**-0.5 if enabled else 1.0


def model_overrides(model_width: int, model_depth: int, optim: Any) -> dict[str, float]:
    """The ModelOptions CompleteP sets: residual-branch multiplier and head init scale."""
    m_n, m_l = width_depth_ratios(model_width, model_depth, optim)
    return {
        "branch_scale": residual_multiplier(m_l, optim.depth_alpha, optim.completep),
        "head_init_scale": head_init_scale(m_n, optim.completep),
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
