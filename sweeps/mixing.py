"""Mixing: modality token fractions (text, image-text, audio-text) on a simplex grid at fixed compute.

Every point trains the same model for the same horizon, so the per-modality validation losses in
results.csv (loss_text, loss_image, loss_audio) trace the trade-off between modalities. For a comparison
on identical validation tokens, `mdiff nelbo --mix ...` re-scores every run on one fixed mix (REPRODUCTION.md).

Variants:
  cpu   fifths with every modality present (6 mixes) x seeds 0-2: the quickstart's cpu-s (a cpu-xxs grid
        resolved no trade-off: its losses barely depended on the data) at the quickstart horizon (300 steps
        of 16 x 128 tokens); 18 same-shape points, so the runner trains them packed in one process
  pod   tenths with every modality present (36 points), the pilot model at its 13B-token horizon
"""

from mdiff.sweeps import Sweep, product, simplex, sweep

VARIANTS = ("cpu", "pod")
MIX_KEYS = ("data.mix.text", "data.mix.image", "data.mix.audio")
CPU_SEEDS = (0, 1, 2)
CPU_COMMON = {
    "train.eval_every": 0,  # evaluate once, at the end
    "train.eval_batches": 8,
    "train.checkpoint_every": 300,
    "train.progress": False,
}


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        mixes = simplex(MIX_KEYS, 5, min_parts=1)
        return Sweep(config="experiments/quickstart.py:cpu-s", points=product(mixes, sweep("seed", CPU_SEEDS)),
                     common=CPU_COMMON, description="mixing simplex (fifths) x 3 seeds, cpu-s")
    return Sweep(config="experiments/pilot.py:b256", points=simplex(MIX_KEYS, 10, min_parts=1), devices=64, hosts=8)
