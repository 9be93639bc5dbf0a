"""Batch size: physical batch x token horizon, naive hyperparameters vs the SDE reparameterisation, 3 seeds.

With optim.reparameterise=True, lr, betas, eps (and weight decay) follow kappa = (D_base/D)^gamma B/B_base,
so the loss should stay flat in the physical batch up to B_crit = D / (L S_crit) and rise beyond; with False
the base values are used as they are at every batch, and the loss has an optimum in B that moves with D
(B* = B_base (D/D_base)^gamma, which is how analysis/batch.py measures gamma from the naive runs). The
warm-up is the same number of tokens at every point (not a fraction of the steps, not capped in steps), so
the comparison across batches is not confounded by warm-ups of different lengths. The seeds of a point
differ only in the seed, so the runner trains them packed in one process (mdiff.train.packed).

Variants:
  cpu   cpu-xs, batches 4, 16, 64 x horizons of 25 and 100 steps at the base batch 16 (51,200 and 204,800
        tokens), base point B_base = 16, D_base = 102,400 tokens; warm-up 10,240 tokens; 3 seeds (36 runs)
  pod   the pilot, batches 64 ... 1024 x 3.25B and 13B tokens, 3 seeds (60 runs; 64 devices on 8 hosts)
"""

from mdiff.sweeps import Sweep, product, sweep

VARIANTS = ("cpu", "pod")

CPU_SEQ, CPU_BATCH_BASE = 128, 16
CPU_STEP_TOKENS = CPU_BATCH_BASE * CPU_SEQ
CPU_COMMON = {
    "optim.batch_base": CPU_BATCH_BASE,
    "optim.tokens_base": 50 * CPU_STEP_TOKENS,
    "optim.warmup": 0.0,  # no fraction: the warm-up is given in tokens alone
    "optim.warmup_tokens": 5 * CPU_STEP_TOKENS,
    "optim.warmup_steps_max": 0,
    "train.eval_every": 0,  # one evaluation, at the end
    "train.eval_batches": 8,
    "train.eval_batch": 16,
    "train.log_every": 5,
    "train.checkpoint_every": 1000,
}


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        points = product(
            sweep("seed", [0, 1, 2]),
            sweep("optim.reparameterise", [False, True]),
            sweep("train.tokens", [25 * CPU_STEP_TOKENS, 100 * CPU_STEP_TOKENS]),
            sweep("train.batch", [4, 16, 64]),
        )
        # Run order: the reparameterised curves first, the shorter horizon first (what a partial sweep shows).
        points.sort(key=lambda p: (not p["optim.reparameterise"], p["train.tokens"], p["train.batch"], p["seed"]))
        return Sweep(config="experiments/quickstart.py:cpu-xs", points=points, common=CPU_COMMON,
                     description="loss vs physical batch, naive vs reparameterised")  # fmt: skip
    points = product(
        sweep("seed", [0, 1, 2]),
        sweep("optim.reparameterise", [False, True]),
        sweep("train.batch", [64, 128, 256, 512, 1024]),
        sweep("train.tokens", [3_250_000_000, 13_000_000_000]),
    )
    common = {"optim.warmup": 0.0, "optim.warmup_tokens": 1000 * 256 * 1024, "optim.warmup_steps_max": 0}
    return Sweep(config="experiments/pilot.py:b256", points=points, common=common, devices=64, hosts=8)
