"""Schedules: the masking schedule of each modality at fixed compute (t is shared per sequence).

Variants:
  cpu   the all-linear baseline, then one modality at a time through cosine, sine, polynomial(2) and
        geometric(0.01,20) (13 points, cpu-s at the quickstart horizon)
  pod   every combination of linear, cosine, polynomial(2) and geometric(0.01,20) over the three
        modalities (64 points, the pilot model)
"""

from mdiff.sweep import Sweep, chain, product, sweep
from mdiff.vocab import MODALITIES

VARIANTS = ("cpu", "pod")
ALTERNATIVES = ("cosine", "sine", "polynomial(2)", "geometric(0.01,20)")


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        baseline = [{f"diffusion.schedule.{m}": "linear" for m in MODALITIES}]
        one_at_a_time = [sweep(f"diffusion.schedule.{m}", ALTERNATIVES) for m in MODALITIES]
        return Sweep(config="experiments/quickstart.py:cpu-s", points=chain(baseline, *one_at_a_time))
    choices = ("linear", "cosine", "polynomial(2)", "geometric(0.01,20)")
    points = product(*(sweep(f"diffusion.schedule.{m}", choices) for m in MODALITIES))
    return Sweep(config="experiments/pilot.py:b256", points=points, devices=64, hosts=8)
