"""The paper's pilot (arXiv 2602.21472, its optimiser set-up): the base point the batch study starts from.

~320M total parameters (most of them in the two vocabulary matrices), base batch 256 sequences,
13B-token horizon, cosine schedule with a 1k-step warm-up capped at 25% of the steps. Variants change
only the physical batch (`b64` ... `b1024`); the SDE reparameterisation maps the base hyperparameters.
"""

from mdiff.defaults import base_config

BATCHES = (64, 128, 256, 512, 1024)
VARIANTS = ("base", *(f"b{b}" for b in BATCHES), "naive-b1024")

TOKENS = 13_000_000_000
BATCH_BASE = 256
SEQ_LEN = 1024


def get_config(variant: str = "base"):
    config = base_config()
    config.name = f"pilot-{variant}"
    config.model.size = "pilot-320m"
    config.model.dtype = "bfloat16"
    config.data.seq_len = SEQ_LEN
    config.train.tokens = TOKENS
    config.train.log_every = 50
    config.train.eval_every = 2000
    config.train.eval_batches = 16
    config.train.checkpoint_every = 2000
    config.optim.batch_base = BATCH_BASE
    config.optim.seq_len_base = SEQ_LEN  # base point: 256 x 1024 tokens per step
    config.optim.tokens_base = TOKENS
    config.optim.schedule = "cosine"
    config.optim.warmup = 0.25  # cap: 25% of the steps
    config.optim.warmup_steps_max = 1000
    config.optim.steps_critical = 2000
    config.optim.completep = True
    config.optim.width_base = 1024
    config.optim.depth_base = 6
    batch = BATCH_BASE
    if variant.startswith("b") and variant[1:].isdigit():
        batch = int(variant[1:])
    elif variant.startswith("naive-b"):
        batch = int(variant.split("-b")[1])
        config.optim.reparameterise = False
    config.train.batch = batch
    config.train.eval_batch = 64
    return config
