"""Symmetry: the symmetry generative model's hyperparameters (experiments/symmetry_*.py configs).

Axes: the invertibility loss weight of the inference network (stage 1), the flow's consistency
weight and depth (stage 2), and augmentation samples per example. Runs use `mdiff symmetry train`.

Variants:
  cpu        digits `quick` (both stages in minutes on a CPU): invertibility x consistency (6 points)
  recovery   dSprites `known` (hearts rotated U(+-60 deg), ellipses U(+-30 deg), both shifted): the suite's
             stage-1 recipe (symmetric loss, augmentation-range schedule) against the paper's own dSprites
             recipe (non-symmetric loss, blur 3, invertibility 1.0, full range from the start), seeds 0-2
             (6 runs, 2000 + 2000 steps each, seed-major so a partial sweep compares both recipes)
  unrotated  dSprites `unrotated` (no rotation added: the SGM should learn none), seeds 0-2
  pod        digits at the paper's settings: invertibility x num_flows x n_samples (18 points)
"""

from mdiff.sweeps import Sweep, product, sweep, zipit

VARIANTS = ("cpu", "recovery", "unrotated", "pod")
COMMAND = ("symmetry", "train")
SEEDS = (0, 1, 2)
# stage-1 recipes on dSprites `known`: (suite, paper); the paper's is experiments/symmetry_dsprites.py:known_paper
RECIPES = zipit(
    sweep("inference.symmetric", [True, False]),
    sweep("inference.invertibility", [0.1, 1.0]),
    sweep("inference.blur_sigma_init", [0.0, 3.0]),
    sweep("inference.aug_init_mult", [0.1, 1.0]),
    sweep("inference.aug_end", [1.0, 0.0]),
)
QUIET = {"train.progress": False}


def get_sweep(variant: str) -> Sweep:
    if variant == "recovery":
        return Sweep(config="experiments/symmetry_dsprites.py:known", points=product(sweep("seed", SEEDS), RECIPES),
                     common=QUIET, command=COMMAND, description="SGM recovery of known eta: suite vs paper recipe")
    if variant == "unrotated":
        return Sweep(config="experiments/symmetry_dsprites.py:unrotated", points=sweep("seed", SEEDS),
                     common=QUIET, command=COMMAND,
                     description="SGM on unrotated dSprites: no rotation should be learned")
    if variant == "cpu":
        points = product(sweep("inference.invertibility", [0.0, 0.1, 1.0]), sweep("flow.consistency", [0.0, 1.0]))
        return Sweep(config="experiments/symmetry_digits.py:quick", points=points, command=COMMAND)
    points = product(
        sweep("inference.invertibility", [0.0, 0.1]),
        sweep("flow.num_flows", [4, 6, 8]),
        sweep("inference.n_samples", [1, 5, 10]),
    )
    return Sweep(config="experiments/symmetry_digits.py:paper", points=points, command=COMMAND, devices=8)
