"""Defaults and checks for `config.train`.

Checks that need the devices (the batch against the data-parallel size) run in the train loop
before anything compiles (`check_batch_layout`, which the sweep expander calls too).
"""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator


def train_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            batch=32,  # physical batch (sequences per optimiser step, all hosts together)
            tokens=1_000_000,  # token horizon D; steps = tokens / (seq_len * batch)
            microbatches=1,  # gradient accumulation; does not change the maths
            log_every=10,  # metrics.jsonl record every k steps (and at the last step)
            eval_every=0,  # 0 -> only at the end
            eval_batches=4,  # validation batches per evaluation (of train.eval_batch sequences)
            # Sequences per validation batch. Fixed (not tied to train.batch) so that runs of a batch-size
            # sweep evaluate on the same sequences with the same noise; 0 -> train.batch / train.microbatches.
            eval_batch=16,
            eval_seed=1234,  # fixed noise (t and masks) for evaluation, comparable across runs
            checkpoint_every=0,  # 0 -> only at the end (and on preemption)
            keep_checkpoints=2,
            checkpoint_async=True,
            peak_flops=0.0,  # per-device peak FLOP/s for MFU; 0 -> mdiff.train.mfu's table
            progress=True,  # progress bar (also off with env MDIFF_PROGRESS=0)
        )
    )


@register_validator("train")
def validate_train(config: ConfigDict) -> None:
    t = config.train
    if not 0 <= config.seed < 2**31:  # the compiled initialisation takes it as an int32 argument
        fail("seed", config.seed, "must be in [0, 2**31)")
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
    for key in ("log_every",):
        if t[key] < 1:
            fail(f"train.{key}", t[key], "must be >= 1")
    for key in ("eval_every", "eval_batches", "eval_batch", "checkpoint_every", "peak_flops"):
        if t[key] < 0:
            fail(f"train.{key}", t[key], "must be >= 0")
    if t.keep_checkpoints < 1:
        fail("train.keep_checkpoints", t.keep_checkpoints, "must be >= 1 (resume needs one)")


def eval_batch_size(config: ConfigDict) -> int:
    """Sequences per validation batch: train.eval_batch, or one micro-batch of the training batch."""
    return config.train.eval_batch or config.train.batch // config.train.microbatches


def check_batch_layout(config: ConfigDict, data_parallel: int) -> None:
    """The one batch-divisibility rule: the physical batch splits into train.microbatches micro-batches
    whose rows split evenly over the `data_parallel` devices of the batch's mesh axes (in pairs with
    anti-masking); validation batches split the same way."""
    t = config.train
    group = 2 if config.diffusion.anti_masking else 1
    pairs = " x 2 (anti-masking pairs)" if group == 2 else ""
    unit = data_parallel * t.microbatches * group
    if t.batch % unit:
        fits = [b for b in (t.batch - t.batch % unit, t.batch - t.batch % unit + unit) if b > 0]
        fail(
            "train.batch",
            t.batch,
            f"must be divisible by data-parallel size {data_parallel} x train.microbatches={t.microbatches}{pairs} "
            f"= {unit}; e.g. train.batch={' or '.join(map(str, fits))}",
        )
    eval_rows, unit = eval_batch_size(config), data_parallel * group
    if eval_rows % unit:
        fail(
            "train.eval_batch",
            eval_rows,
            f"must be divisible by data-parallel size {data_parallel}{pairs}; "
            f"e.g. train.eval_batch={max(unit, eval_rows - eval_rows % unit)}",
        )
