"""CPU quickstart: the tiny tri-modal models the quickstart sweep trains on a 2-core machine.

Variants: one per quickstart model size (`cpu-xxs` ... `cpu-l`, presets in mdiff.model.scaling) on
the embedded offline dataset, and `test`, which trains in seconds on the synthetic dataset.
"""

from mdiff.defaults import base_config

SIZES = ("cpu-xxs", "cpu-xs", "cpu-s", "cpu-m", "cpu-l")
VARIANTS = (*SIZES, "test")


def get_config(variant: str = "cpu-s"):
    config = base_config()
    config.name = f"quickstart-{variant}"
    config.data.seq_len = 128
    config.train.batch = 16
    config.train.tokens = 16 * 128 * 300
    config.train.log_every = 10
    config.train.eval_every = 100
    config.train.eval_batches = 2
    config.train.checkpoint_every = 100
    # Base point of the quickstart: the batch and horizon the base values were picked at.
    config.optim.batch_base = 16
    config.optim.tokens_base = 16 * 128 * 300
    config.optim.lr = 3e-3
    config.optim.warmup = 0.1
    config.optim.steps_critical = 50
    config.optim.width_base = 48
    config.optim.depth_base = 3
    if variant == "test":
        config.model.size = "cpu-xxs"
        config.data.dataset = "synthetic"
        config.data.seq_len = 32
        config.train.batch = 8
        config.train.tokens = 8 * 32 * 12
        config.train.log_every = 2
        config.train.eval_every = 6
        config.train.eval_batches = 1
        config.train.eval_batch = 8
        config.train.checkpoint_every = 4
        config.train.progress = False
        config.optim.batch_base = 8
        config.optim.tokens_base = 8 * 32 * 12
        config.optim.steps_critical = 4
    else:
        config.model.size = variant
    return config
