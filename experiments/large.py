"""Large runs: the paper's 3B model on a pod, and a ~1B model for single-GPU MFU checks.

* `3b`: 3B preset, bfloat16, scanned and rematerialised layers, FSDP x tensor mesh for a TPU pod
  slice (fsdp=16, tensor=4, data takes the rest: 64 chips or more). The horizon is the paper's 6.4T
  tokens.
* `1b`: ~1B preset on one GPU (or data-parallel over several), a short horizon for MFU measurements.

tests/test_experiments.py compiles both ahead of time on fake CPU devices (64 for `3b`).
"""

from mdiff.defaults import base_config

VARIANTS = ("3b", "1b")


def get_config(variant: str = "3b"):
    config = base_config()
    config.name = f"large-{variant}"
    config.model.dtype = "bfloat16"
    config.model.scan_layers = True
    config.model.remat = True
    config.data.seq_len = 2048
    config.train.log_every = 20
    config.train.eval_every = 5000
    config.train.eval_batches = 8
    config.train.checkpoint_every = 2000
    config.train.keep_checkpoints = 3
    config.train.progress = False
    config.optim.schedule = "cosine"
    config.optim.warmup = 0.25
    config.optim.warmup_steps_max = 1000
    config.optim.completep = True
    config.optim.width_base = 1024
    config.optim.depth_base = 6
    config.optim.batch_base = 256  # the pilot's base point: 256 sequences of 1024 tokens per step
    config.optim.seq_len_base = 1024
    config.optim.tokens_base = 13_000_000_000
    config.optim.steps_critical = 2000
    if variant.startswith("3b"):
        config.model.size = "3b"
        config.train.batch = 1024
        config.train.tokens = 6_400_000_000_000
        config.mesh.shape.fsdp = 16
        config.mesh.shape.tensor = 4
        config.train.eval_batch = 256
    else:
        config.model.size = "1b"
        config.train.batch = 8
        config.train.microbatches = 1
        config.train.tokens = 8 * 2048 * 300
        config.train.eval_batch = 8
        config.train.eval_every = 0
        config.train.checkpoint_every = 0
        config.optim.steps_critical = 100
    return config
