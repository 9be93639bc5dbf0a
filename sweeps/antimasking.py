"""Anti-masking: the final loss with and without it at equal distinct data tokens, over seeds.

`train.tokens` and `train.batch` count what the model computes on; with diffusion.anti_masking=True a step
holds batch / 2 distinct data rows, each as a mask and its complement. So the anti-masked arm runs twice the
physical batch and twice the tokens: both arms take the same steps over the same distinct data rows
(`tokens` in summary.json), with the same hyperparameters (the batch reparameterisation is off, kappa = 1,
so the doubled physical batch does not change the lr), and the anti-masked arm computes on twice as many
rows. The gradient variance at fixed parameters, with and without it, is measured on a trained run of this
sweep by `python -m analysis.gradient_variance` (written to the sweep directory, read by the report).

Variants:
  cpu   cpu-xs, 100 steps of 16 distinct rows x 128 tokens, anti-masking off / on, 3 seeds (6 runs)
  pod   the pilot at 3.25B distinct tokens (batch 256 distinct rows), off / on, 3 seeds (64 devices on 8 hosts)
"""

from mdiff.sweeps import Sweep, product, sweep, zipit

VARIANTS = ("cpu", "pod")


def arms(batch: int, tokens: int) -> list[dict]:
    """Off: `batch` rows of distinct data; on: 2 x batch rows (batch distinct + complements), 2 x tokens."""
    return zipit(sweep("diffusion.anti_masking", [False, True]), sweep("train.batch", [batch, 2 * batch]),
                 sweep("train.tokens", [tokens, 2 * tokens]))  # fmt: skip


CPU_COMMON = {
    "optim.reparameterise": False,  # the same lr, betas and eps in both arms
    "train.eval_every": 0,  # one evaluation, at the end (no anti-masking in evaluation)
    "train.eval_batches": 16,
    "train.eval_batch": 16,
    "train.log_every": 10,
    "train.checkpoint_every": 1000,
}


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        points = product(sweep("seed", [0, 1, 2]), arms(16, 100 * 16 * 128))
        return Sweep(config="experiments/quickstart.py:cpu-xs", points=points, common=CPU_COMMON,
                     description="anti-masking off / on at equal distinct data tokens")  # fmt: skip
    points = product(sweep("seed", [0, 1, 2]), arms(256, 3_250_000_000))
    common = {"optim.reparameterise": False, "train.eval_batch": 128}  # eval rows split over 64 devices x 2 (pairs)
    return Sweep(config="experiments/pilot.py:b256", points=points, common=common,
                 devices=64, hosts=8, description="anti-masking off / on at equal distinct data tokens")
