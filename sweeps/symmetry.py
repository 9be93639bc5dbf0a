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
  vae        data efficiency: digits `quick` at 150 and 1,200 training images x seeds 0-2; each run trains the SGM
             (300 + 300 steps), then the VAE, AugVAE, prototype-VAE and the paper's InvVAE weight until their
             validation ELBO stops improving (checked every 200 steps, patience 3, cap 4,000), and scores all
             on the same test images (32 importance samples); seed-major
  pod        digits at the paper's settings: invertibility x num_flows x n_samples (18 points)
"""

from mdiff.sweeps import Sweep, product, sweep, zipit

VARIANTS = ("cpu", "recovery", "unrotated", "vae", "pod")
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
VAE_SIZES = (150, 1200)
VAE_MODELS = ("vae", "augvae", "protovae", "invvae")  # every kind config.vae.models allows


def vae_settings(sgm_steps: int = 300, vae_steps: int = 4000, iw: int = 32, valid_every: int = 200,
                 patience: int = 3) -> dict:
    """The overrides of one data-efficiency cell (also used by benchmarks/symmetry.py --vae): both SGM stages of
    `sgm_steps`, then every VAE kind early-stopped on its validation ELBO (`vae_steps` is a cap)."""
    return {"inference.steps": sgm_steps, "flow.steps": sgm_steps, "vae.models": VAE_MODELS, "vae.steps": vae_steps,
            "vae.iw_samples": iw, "vae.valid_every": valid_every, "vae.patience": patience, **QUIET}


def get_sweep(variant: str) -> Sweep:
    if variant == "recovery":
        return Sweep(config="experiments/symmetry_dsprites.py:known", points=product(sweep("seed", SEEDS), RECIPES),
                     common=QUIET, command=COMMAND, description="SGM recovery of known eta: suite vs paper recipe")
    if variant == "unrotated":
        return Sweep(config="experiments/symmetry_dsprites.py:unrotated", points=sweep("seed", SEEDS),
                     common=QUIET, command=COMMAND,
                     description="SGM on unrotated dSprites: no rotation should be learned")
    if variant == "vae":
        return Sweep(config="experiments/symmetry_digits.py:quick",
                     points=product(sweep("seed", SEEDS), sweep("data.num_train", VAE_SIZES)), common=vae_settings(),
                     command=COMMAND, description="test bound of VAE / AugVAE / prototype-VAE vs training-set size")
    if variant == "cpu":
        points = product(sweep("inference.invertibility", [0.0, 0.1, 1.0]), sweep("flow.consistency", [0.0, 1.0]))
        return Sweep(config="experiments/symmetry_digits.py:quick", points=points, command=COMMAND)
    points = product(
        sweep("inference.invertibility", [0.0, 0.1]),
        sweep("flow.num_flows", [4, 6, 8]),
        sweep("inference.n_samples", [1, 5, 10]),
    )
    return Sweep(config="experiments/symmetry_digits.py:paper", points=points, command=COMMAND, devices=8)
