"""SGM on procedural dSprites-like shapes (square, ellipse, heart), affine transforms, tanh-bounded outputs.

Variants:
  tiny      seconds on CPU (tests).
  quick     a few CPU minutes: the paper's latent distributions (positions, scales, orientations per shape).
  known     canonical heart and ellipse (centred, upright) moved by a KNOWN eta: rotation U(+-60 deg) for hearts,
            U(+-30 deg) for ellipses, shift U(+-0.15) for both; the learned p(eta | prototype) should match it.
  unrotated like `known` without rotation: the SGM should learn that no rotation is present.
  known_paper  `known` with the paper's own dSprites stage-1 recipe instead of the suite's: non-symmetric loss
            (one augmentation), blur sigma 3 over the first 1% of steps, invertibility weight 1.0, the full
            augmentation range from the start (no augmentation-range schedule).
  paper     the paper's dSprites settings (bounds 0.75, squash, invertibility 1.0, no symmetrised loss, blur 3).
"""

import math

from mdiff.symmetry.defaults import symmetry_config

VARIANTS = ("tiny", "quick", "known", "unrotated", "known_paper", "paper")


def get_config(variant: str = "quick"):
    c = symmetry_config()
    c.name = f"symmetry_dsprites_{variant}"
    c.data.update(name="dsprites", image_size=32, num_train=4000, num_valid=256, num_test=256)
    c.transform.update(bounds=(0.75, 0.75, math.pi, 0.75, 0.75), squash=True)
    c.inference.update(symmetric=False, invertibility=1.0, blur_sigma_init=3.0, clip=3.0, lr=1e-3,
                       init_mult=3e-2, warmup=0.05)
    c.flow.update(lr=3e-4, final_mult=0.3, dropout=0.05, bounds_mult=0.75)
    if variant == "paper":
        c.data.num_train = 50_000
        return c
    c.inference.update(hidden=(256, 128), batch=64, n_samples=3, steps=1500)
    c.flow.update(hidden=(256, 128), conditioner_hidden=(64,), num_flows=4, batch=64, n_samples=3, steps=1500,
                  lr=1e-3, final_mult=0.1)
    c.train.update(log_every=50, checkpoint_every=500, eval_samples=500, eval_examples=32)
    if variant == "tiny":
        c.data.update(image_size=16, num_train=64, num_valid=16, num_test=16)
        c.inference.update(hidden=(32, 16), steps=4, batch=8, n_samples=2)
        c.flow.update(hidden=(32, 16), conditioner_hidden=(8,), num_flows=2, steps=4, batch=8, n_samples=2)
        c.train.update(log_every=2, checkpoint_every=0, eval_batch=16, eval_samples=50, eval_examples=4)
    elif variant in ("known", "unrotated", "known_paper"):
        c.data.update(image_size=20, num_train=2000, shapes=("heart", "ellipse"), render="canonical",
                      known_half_width=(0.15, 0.15, 0.0 if variant == "unrotated" else math.pi / 3, 0.0, 0.0),
                      known_class_scale=() if variant == "unrotated" else (1.0, 0.5))
        # smaller frame, gentler augmentations: less content is pushed out of frame
        c.transform.update(bounds=(0.5, 0.5, math.pi, 0.5, 0.5), order=1)
        # the augmentation range grows from 10% to the full range over stage 1: with the full range from the start
        # q never learns the heart's rotation (measured q-rotation slope ~0.0 on the known rotations after 2k and
        # 6k steps; with this schedule 0.88), see train.aug_mult
        c.inference.update(symmetric=True, invertibility=0.1, blur_sigma_init=0.0, steps=2000, aug_init_mult=0.1,
                           aug_end=1.0)
        c.flow.update(steps=2000, bounds_mult=1.0)
        if variant == "known_paper":  # the paper's dSprites stage 1 (symmetric loss off, blur, no range schedule)
            c.inference.update(symmetric=False, invertibility=1.0, blur_sigma_init=3.0, blur_end=0.01,
                               aug_init_mult=1.0, aug_end=0.0)
    elif variant != "quick":
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return c
