"""Schedules: the masking schedule of each modality at fixed compute (t is shared per sequence).

Variants:
  cpu   linear, cosine and geometric(0.01,20), each for every modality at once, x seeds 0 and 1 (6 points):
        the smallest quickstart model (cpu-xxs), 150 steps of 16 x 128 tokens. Each modality's loss is
        compared across schedules; `mdiff nelbo` then scores every run under one estimator on the same
        tokens, and `mdiff eval` scores samples (REPRODUCTION.md)
  pod   every combination of linear, cosine, polynomial(2) and geometric(0.01,20) over the three
        modalities (64 points, the pilot model)
"""

from mdiff.sweeps import Sweep, product, sweep
from mdiff.vocab import MODALITIES

VARIANTS = ("cpu", "pod")
CPU_SCHEDULES = ("linear", "cosine", "geometric(0.01,20)")
CPU_SEEDS = (0, 1)
CPU_COMMON = {
    "train.tokens": 16 * 128 * 150,
    "train.eval_every": 0,  # evaluate once, at the end
    "train.eval_batches": 8,
    "train.checkpoint_every": 150,
    "train.progress": False,
}


def same_schedule(names) -> list[dict]:
    """One point per schedule name, applied to every modality."""
    return [{f"diffusion.schedule.{m}": name for m in MODALITIES} for name in names]


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        points = product(same_schedule(CPU_SCHEDULES), sweep("seed", CPU_SEEDS))
        return Sweep(config="experiments/quickstart.py:cpu-xxs", points=points, common=CPU_COMMON,
                     description="one schedule for every modality x 2 seeds, cpu-xxs")
    choices = ("linear", "cosine", "polynomial(2)", "geometric(0.01,20)")
    points = product(*(sweep(f"diffusion.schedule.{m}", choices) for m in MODALITIES))
    return Sweep(config="experiments/pilot.py:b256", points=points, devices=64, hosts=8)
