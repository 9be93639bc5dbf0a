"""Anti-masking: the final loss with and without it at equal distinct data tokens, over seeds.

With diffusion.anti_masking=True each data row is trained on twice per step, once with a mask and once
with its complement (the pairs are an unbiased estimate of the same bound); `train.tokens` counts distinct
data tokens in both arms, so the two arms see the same data and the anti-masked arm computes on twice as
many rows. The gradient variance at fixed parameters, with and without it, is measured on a trained run
of this sweep by `python -m analysis.gradient_variance` (written to the sweep directory, read by the report).

Variants:
  cpu   cpu-xs, 100 steps of 16 x 128 distinct tokens, anti-masking off / on, 3 seeds (6 runs)
  pod   the pilot at 3.25B distinct tokens, off / on, 3 seeds (6 runs; 64 devices on 8 hosts)
"""

from mdiff.sweep import Sweep, product, sweep

VARIANTS = ("cpu", "pod")

CPU_COMMON = {
    "train.batch": 16,
    "train.tokens": 100 * 16 * 128,
    "train.eval_every": 0,  # one evaluation, at the end (no anti-masking in evaluation)
    "train.eval_batches": 16,
    "train.eval_batch": 16,
    "train.log_every": 10,
    "train.checkpoint_every": 1000,
}


def get_sweep(variant: str) -> Sweep:
    points = product(sweep("seed", [0, 1, 2]), sweep("diffusion.anti_masking", [False, True]))
    if variant == "cpu":
        return Sweep(config="experiments/quickstart.py:cpu-xs", points=points, common=CPU_COMMON,
                     description="anti-masking off / on at equal distinct data tokens")  # fmt: skip
    common = {"train.tokens": 3_250_000_000, "train.eval_batch": 128}  # eval rows split over 64 devices x 2 (pairs)
    return Sweep(config="experiments/pilot.py:b256", points=points, common=common,
                 devices=64, hosts=8, description="anti-masking off / on at equal distinct data tokens")
