"""Batch size: physical batch x token horizon, naive hyperparameters vs the SDE reparameterisation.

With optim.reparameterise=True, lr, betas, eps (and weight decay) follow kappa = (D_base/D)^gamma B/B_base,
so the loss should stay flat in the physical batch up to B_crit = D / (L S_crit); with False the base
values are used as they are and the loss moves with the batch (analysis: loss against train.batch).

Variants:
  cpu   cpu-xs, batches 4 ... 64 x horizons of 100 and 400 steps at the base batch (20 points)
  pod   the pilot, batches 64 ... 1024 x 3.25B and 13B tokens (20 points; 64 devices on 8 hosts)
"""

from mdiff.sweep import Sweep, product, sweep

VARIANTS = ("cpu", "pod")


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        step_tokens = 16 * 128  # the quickstart's base batch x seq_len
        points = product(
            sweep("optim.reparameterise", [False, True]),
            sweep("train.batch", [4, 8, 16, 32, 64]),
            sweep("train.tokens", [100 * step_tokens, 400 * step_tokens]),
        )
        return Sweep(config="experiments/quickstart.py:cpu-xs", points=points)
    points = product(
        sweep("optim.reparameterise", [False, True]),
        sweep("train.batch", [64, 128, 256, 512, 1024]),
        sweep("train.tokens", [3_250_000_000, 13_000_000_000]),
    )
    return Sweep(config="experiments/pilot.py:b256", points=points, devices=64, hosts=8)
