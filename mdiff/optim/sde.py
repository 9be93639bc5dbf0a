"""The SDE batch reparameterisation: from base hyperparameters to this run's (arXiv 2602.21472, batch size).

Base hyperparameters are tuned once at a base point: B_base sequences of L_base tokens per step
(`optim.batch_base`, `optim.seq_len_base`) and token horizon D_base (`optim.tokens_base`). Batches
enter in TOKENS PER STEP, so a run with another sequence length is placed correctly: a run with
physical batch B sequences of L tokens and horizon D uses

    kappa = (D_base / D)^gamma * (B L) / (B_base L_base)
    lr = sqrt(kappa) lr_base,  beta_i = beta_i_base^kappa,  eps = eps_base / sqrt(kappa)
    weight decay: * sqrt(kappa) (optax-style, lr-coupled) | * kappa (decoupled) | unchanged
    steps S = D / (L B)

which is valid while S >= S_crit. The logical batch is the batch at which the base values apply
unchanged for this horizon, B / kappa sequences of L tokens = B_base L_base (D / D_base)^gamma tokens
per step. Micro-batching is separate and does not enter here. `OptimPlan.UNITS` names every field's
unit; it is written into summary.json's `plan`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from mdiff.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OptimPlan:
    """Everything the optimiser and the loop need about this run's batch and duration."""

    batch: int  # physical batch (sequences per optimiser step)
    seq_len: int
    batch_tokens: int  # physical batch in tokens per step: batch * seq_len
    batch_tokens_base: int  # the base point's tokens per step: batch_base * seq_len_base
    steps: int
    tokens: int  # tokens actually trained: steps * batch * seq_len
    kappa: float  # the factor applied (1 when the reparameterisation is off)
    lr: float  # peak learning rate
    b1: float
    b2: float
    eps: float
    weight_decay: float
    decoupled_decay: bool  # decay not multiplied by the peak lr (Loshchilov-Hutter)
    batch_logical: float
    warmup_steps: int
    warmup_tokens: int  # warmup_steps * batch_tokens
    steps_critical: int

    UNITS = {
        "batch": "sequences per step",
        "seq_len": "tokens per sequence",
        "batch_tokens": "tokens per step",
        "batch_tokens_base": "tokens per step",
        "batch_logical": "sequences of seq_len tokens per step",
        "tokens": "tokens (processed)",
        "steps": "optimiser steps",
        "warmup_steps": "optimiser steps",
        "warmup_tokens": "tokens (processed)",
        "kappa": "(D_base/D)^gamma * batch_tokens / batch_tokens_base",
    }

    @property
    def below_critical(self) -> bool:
        return self.steps < self.steps_critical

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"below_critical": self.below_critical, "units": dict(self.UNITS)}


def kappa(batch_tokens: int, tokens: float, batch_tokens_base: int, tokens_base: float, gamma: float) -> float:
    """kappa = (D_base / D)^gamma * (B L) / (B_base L_base), batches in tokens per step."""
    return (tokens_base / tokens) ** gamma * (batch_tokens / batch_tokens_base)


def scaled_hyperparameters(
    k: float, *, lr: float, b1: float, b2: float, eps: float, weight_decay: float, weight_decay_scaling: str
) -> dict[str, float]:
    """Base values mapped through kappa: lr*sqrt(k), beta^k, eps/sqrt(k), decay per its coupling."""
    decay_factor = {"sqrt": math.sqrt(k), "linear": k, "none": 1.0}[weight_decay_scaling]
    return dict(
        lr=lr * math.sqrt(k),
        b1=b1**k,
        b2=b2**k,
        eps=eps / math.sqrt(k),
        weight_decay=weight_decay * decay_factor,
    )


def num_steps(tokens: int, batch: int, seq_len: int) -> int:
    """S = D / (L B), rounded down; an error (naming what would fit) if that is not even one step."""
    per_step = batch * seq_len
    steps = tokens // per_step
    if steps < 1:
        raise ConfigError(
            f"config.train.tokens={tokens}: shorter than one step of train.batch * data.seq_len = {per_step} "
            f"tokens; use train.tokens >= {per_step} or a batch <= {max(tokens // seq_len, 0)}"
        )
    return steps


def warmup_steps(steps: int, batch: int, seq_len: int, optim: Any) -> int:
    """Warm-up in steps: tokens if given, capped by the fraction of the run and the absolute cap."""
    by_fraction = int(optim.warmup * steps)
    if optim.warmup_tokens > 0:
        by_tokens = math.ceil(optim.warmup_tokens / (batch * seq_len))
        n = min(by_tokens, by_fraction) if optim.warmup > 0 else by_tokens
    else:
        n = by_fraction
    if optim.warmup_steps_max > 0:
        n = min(n, optim.warmup_steps_max)
    return min(n, steps - 1) if steps > 1 else 0


def plan(config: Any) -> OptimPlan:
    """Derive this run's optimiser hyperparameters and step count from the config."""
    o, t = config.optim, config.train
    seq_len = config.data.seq_len
    steps = num_steps(t.tokens, t.batch, seq_len)
    batch_tokens, batch_tokens_base = t.batch * seq_len, o.batch_base * o.seq_len_base
    k = kappa(batch_tokens, t.tokens, batch_tokens_base, o.tokens_base, o.gamma) if o.reparameterise else 1.0
    hp = scaled_hyperparameters(
        k,
        lr=o.lr,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        weight_decay_scaling=o.weight_decay_scaling,
    )
    warm = warmup_steps(steps, t.batch, seq_len, o)
    return OptimPlan(
        batch=t.batch,
        seq_len=seq_len,
        batch_tokens=batch_tokens,
        batch_tokens_base=batch_tokens_base,
        steps=steps,
        tokens=steps * t.batch * seq_len,
        kappa=k,
        **hp,
        decoupled_decay=o.weight_decay_scaling == "linear",
        batch_logical=t.batch / k,
        warmup_steps=warm,
        warmup_tokens=warm * batch_tokens,
        steps_critical=o.steps_critical,
    )


def describe(p: OptimPlan) -> str:
    return (
        f"batch {p.batch} x {p.seq_len} tokens (logical {p.batch_logical:.4g}; base {p.batch_tokens_base} tokens/step), "
        f"kappa {p.kappa:.4g}, steps {p.steps} (warm-up {p.warmup_steps}), lr {p.lr:.4g}, betas ({p.b1:.6g}, {p.b2:.6g}), eps {p.eps:.3g}, "
        f"weight decay {p.weight_decay:.4g}"
    )


def log_plan(p: OptimPlan) -> None:
    """Log the derived values; warn loudly when the run is below S_crit (the SDE view breaks down)."""
    log.info("optimiser plan: %s", describe(p))
    if p.below_critical:
        b_crit = p.tokens // (p.seq_len * p.steps_critical) if p.steps_critical else p.batch
        log.warning(
            "RUN BELOW S_crit: %d steps < optim.steps_critical=%d; the batch reparameterisation is not "
            "valid here (B_crit = D / (L S_crit) = %d sequences < train.batch=%d)",
            p.steps,
            p.steps_critical,
            b_crit,
            p.batch,
        )
