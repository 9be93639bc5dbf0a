"""SGM on scikit-learn digits (upsampled to 28x28), affine transforms (the paper's MNIST settings).

Variants:
  tiny     seconds on CPU: tests and smoke runs.
  quick    the CPU benchmark: both stages in a few minutes, digits rotated by a KNOWN U(+-60 deg) (+-30 deg for
           odd digits) and shifted by U(+-0.1), so the learned p(eta | prototype) can be checked.
  rotated  like quick, longer (a clearer recovery of the added rotations).
  paper    the paper's MNIST architecture and schedule (60k + 60k steps, batch 512): accelerator-sized.
"""

import math

from mdiff.symmetry.defaults import symmetry_config

VARIANTS = ("tiny", "quick", "rotated", "paper")
KNOWN = (0.1, 0.1, math.pi / 3, 0.0, 0.0)  # half-widths: shift x/y, rotation (60 deg), log-scales


def get_config(variant: str = "quick"):
    c = symmetry_config()
    c.name = f"symmetry_digits_{variant}"
    if variant == "paper":
        c.data.known_half_width = KNOWN
        c.data.known_class_scale = (1.0, 0.5)
        return c
    c.inference.update(hidden=(256, 128), batch=64, n_samples=3, lr=1e-3, init_mult=0.03, warmup=0.1)
    c.flow.update(hidden=(256, 128), conditioner_hidden=(64,), num_flows=4, batch=64, n_samples=3,
                  dropout=0.1, lr=1e-3, final_mult=0.1)
    c.train.update(log_every=50, checkpoint_every=500, eval_samples=500, eval_examples=32)
    if variant == "tiny":
        c.data.update(image_size=16, num_train=200, num_valid=32, num_test=32)
        c.inference.update(hidden=(32, 16), steps=6, batch=8, n_samples=2)
        c.flow.update(hidden=(32, 16), conditioner_hidden=(8,), num_flows=2, steps=6, batch=8, n_samples=2)
        c.train.update(log_every=2, checkpoint_every=4, eval_batch=16, eval_samples=50, eval_examples=4)
        c.vae.update(latent=4, hidden=(32,), steps=4, batch=8, iw_samples=8)
        return c
    c.data.known_half_width = KNOWN
    c.data.known_class_scale = (1.0, 0.5)
    if variant == "quick":
        c.inference.steps = 1200
        c.flow.steps = 1200
    elif variant == "rotated":
        c.inference.steps = 6000
        c.flow.steps = 6000
        c.inference.update(hidden=(512, 256), batch=128, n_samples=5)
        c.flow.update(hidden=(512, 256), conditioner_hidden=(128,), batch=128, n_samples=5)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return c
