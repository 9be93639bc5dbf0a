"""Defaults and checks for `config.train`."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator


def train_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            batch=32,  # physical batch (sequences per optimiser step, all hosts together)
            tokens=1_000_000,  # token horizon D; steps = tokens / (seq_len * batch)
            microbatches=1,  # gradient accumulation; does not change the maths
            log_every=10,
            eval_every=0,  # 0 -> only at the end
            eval_batches=4,
            checkpoint_every=0,  # 0 -> only at the end (and on preemption)
            keep_checkpoints=2,
            progress=True,
        )
    )


@register_validator("train")
def validate_train(config: ConfigDict) -> None:
    t = config.train
    if t.batch < 1:
        fail("train.batch", t.batch, "must be >= 1")
    if t.microbatches < 1 or t.batch % t.microbatches:
        fail("train.microbatches", t.microbatches, f"must divide train.batch={t.batch}")
    if t.tokens < t.batch * config.data.seq_len:
        fail(
            "train.tokens",
            t.tokens,
            f"shorter than one step (train.batch * data.seq_len = {t.batch * config.data.seq_len} tokens)",
        )
