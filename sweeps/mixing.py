"""Mixing: modality token fractions (text, image-text, audio-text) on a simplex grid at fixed compute.

Every point trains the same model for the same horizon, so the per-modality validation losses in
results.csv (loss_text, loss_image, loss_audio) trace the trade-off between modalities. For a comparison
on identical validation tokens, `mdiff nelbo --mix ...` re-scores every run on one fixed mix (REPRODUCTION.md).

Variants:
  cpu   fifths with every modality present (6 mixes) at seed 0, and seed 1 at the first (the seed spread):
        the smallest quickstart model (cpu-xxs) at the quickstart horizon (300 steps of 16 x 128 tokens);
        7 runs, each about 10 min wall on the shared 2-core machine (load ~15), 2 at a time
  pod   tenths with every modality present (36 points), the pilot model at its 13B-token horizon
"""

from mdiff.sweeps import Sweep, chain, fixed, product, simplex, sweep

VARIANTS = ("cpu", "pod")
MIX_KEYS = ("data.mix.text", "data.mix.image", "data.mix.audio")
CPU_REPEATED_MIXES = 1  # the first mix of the grid, trained again with seed 1
CPU_COMMON = {
    "train.eval_every": 0,  # evaluate once, at the end
    "train.eval_batches": 8,
    "train.checkpoint_every": 300,
    "train.progress": False,
}


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        mixes = simplex(MIX_KEYS, 5, min_parts=1)
        points = chain(product(mixes[:CPU_REPEATED_MIXES], sweep("seed", (0, 1))),
                       product(mixes[CPU_REPEATED_MIXES:], fixed("seed", 0)))
        return Sweep(config="experiments/quickstart.py:cpu-xxs", points=points, common=CPU_COMMON,
                     description="mixing simplex (fifths), seed 0 everywhere and seed 1 at one mix, cpu-xxs")
    return Sweep(config="experiments/pilot.py:b256", points=simplex(MIX_KEYS, 10, min_parts=1), devices=64, hosts=8)
