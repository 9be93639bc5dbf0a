"""Symmetry: the symmetry generative model's hyperparameters (experiments/symmetry_*.py configs).

Axes: the invertibility loss weight of the inference network (stage 1), the flow's consistency
weight and depth (stage 2), and augmentation samples per example. Runs use `mdiff symmetry train`.

Variants:
  cpu   digits `quick` (both stages in minutes on a CPU): invertibility x consistency (6 points)
  pod   digits at the paper's settings: invertibility x num_flows x n_samples (18 points)
"""

from mdiff.sweep import Sweep, product, sweep

VARIANTS = ("cpu", "pod")
COMMAND = ("symmetry", "train")


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        points = product(sweep("inference.invertibility", [0.0, 0.1, 1.0]), sweep("flow.consistency", [0.0, 1.0]))
        return Sweep(config="experiments/symmetry_digits.py:quick", points=points, command=COMMAND)
    points = product(
        sweep("inference.invertibility", [0.0, 0.1]),
        sweep("flow.num_flows", [4, 6, 8]),
        sweep("inference.n_samples", [1, 5, 10]),
    )
    return Sweep(config="experiments/symmetry_digits.py:paper", points=points, command=COMMAND, devices=8)
