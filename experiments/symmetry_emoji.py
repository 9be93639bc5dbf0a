"""SGM on colour emoji (Noto Color Emoji rendered locally): colour (HSV) and affine + colour transforms.

Variants:
  tiny     seconds on CPU (tests).
  quick    HSV only: emoji recoloured by a KNOWN distribution (hue U(+-0.15) turn, log-saturation U(+-0.3)),
           bounds as the paper's colour MNIST (hue offset 0.5 turn, squash). Measured (seed 0): the hue spread is
           recovered (W1 0.12 x half-width), "no value change" is learned, the saturation spread is over-estimated
           (W1 0.42 x half-width; tests/test_symmetry_recovery.py, slow).
  affine   affine + HSV (8 parameters), as the paper's GalaxyMNIST/PCam setting, CPU-sized.
  paper    affine + HSV with the paper's GalaxyMNIST settings (64x64, 10k steps).
"""

import math

from mdiff.symmetry.defaults import symmetry_config

VARIANTS = ("tiny", "quick", "affine", "paper")
HSV_BOUNDS = (0.5, 2.301, 0.51)
HSV_OFFSET = (0.5, 0.0, 0.0)


def get_config(variant: str = "quick"):
    c = symmetry_config()
    c.name = f"symmetry_emoji_{variant}"
    c.data.update(name="emoji", image_size=24, num_train=2000, num_valid=200, num_test=200, num_classes=12)
    c.inference.update(invertibility=0.0, blur_sigma_init=3.0, clip=2.0, final_mult=1e-4, warmup=0.1)
    c.flow.update(bounds_mult=0.75)
    if variant in ("affine", "paper"):
        c.transform.update(family="affine_hsv", bounds=(0.25, 0.25, math.pi, 0.25, 0.25) + HSV_BOUNDS,
                           offset=(0.0,) * 5 + HSV_OFFSET, squash=True)
        c.data.known_half_width = (0.1, 0.1, math.pi / 6, 0.0, 0.0, 0.15, 0.3, 0.0)
    else:
        c.transform.update(family="hsv", bounds=HSV_BOUNDS, offset=HSV_OFFSET, squash=True)
        c.data.known_half_width = (0.15, 0.3, 0.0)
    if variant == "paper":
        c.data.update(image_size=64, num_train=7000)
        c.inference.update(hidden=(1024, 1024, 512, 256), steps=10_000, lr=3e-4, final_mult=3e-4, warmup=0.2)
        c.flow.update(steps=15_000, num_flows=4, dropout=0.05, lr=3e-4, final_mult=0.03)
        return c
    c.inference.update(hidden=(256, 128), batch=64, n_samples=3, steps=1000, lr=1e-3)
    c.flow.update(hidden=(256, 128), conditioner_hidden=(64,), num_flows=4, batch=64, n_samples=3, steps=1000,
                  lr=1e-3, final_mult=0.1)
    c.train.update(log_every=50, checkpoint_every=500, eval_samples=500, eval_examples=32)
    if variant == "tiny":
        c.data.update(image_size=12, num_train=48, num_valid=16, num_test=16, num_classes=4)
        c.inference.update(hidden=(32, 16), steps=4, batch=8, n_samples=2)
        c.flow.update(hidden=(32, 16), conditioner_hidden=(8,), num_flows=2, steps=4, batch=8, n_samples=2)
        c.train.update(log_every=2, checkpoint_every=0, eval_batch=16, eval_samples=50, eval_examples=4)
    elif variant not in ("quick", "affine"):
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return c
