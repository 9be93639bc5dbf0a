"""Mixing: modality token fractions (text, image-text, audio-text) on a simplex grid at fixed compute.

Every point trains the same model for the same horizon, so the per-modality validation losses in
results.csv (loss_text, loss_image, loss_audio) trace the trade-off between modalities.

Variants:
  cpu   fifths with every modality present (6 points), cpu-s for the quickstart horizon
  pod   tenths with every modality present (36 points), the pilot model at its 13B-token horizon
"""

from mdiff.sweep import Sweep, simplex

VARIANTS = ("cpu", "pod")
MIX_KEYS = ("data.mix.text", "data.mix.image", "data.mix.audio")


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        return Sweep(config="experiments/quickstart.py:cpu-s", points=simplex(MIX_KEYS, 5, min_parts=1))
    return Sweep(config="experiments/pilot.py:b256", points=simplex(MIX_KEYS, 10, min_parts=1), devices=64, hosts=8)
