"""The full default config: every key any experiment may set, with its type fixed by its default.

Each subsystem owns its section (in its package's `defaults.py`) and registers validators for it.
Experiment files under `experiments/` start from `base_config()` and change values, never add keys.
"""

from __future__ import annotations

import ml_collections

from mdiff.data.defaults import data_defaults
from mdiff.diffusion.defaults import diffusion_defaults
from mdiff.diffusion.sampling_defaults import sampling_defaults
from mdiff.model.defaults import model_defaults
from mdiff.optim.defaults import optim_defaults
from mdiff.parallel.defaults import mesh_defaults
from mdiff.train.defaults import train_defaults


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "diffusion"  # which model family the config drives (symmetry configs say "symmetry")
    config.name = ""  # free-form run label, copied into summaries and sweep tables
    config.seed = 0
    config.data = data_defaults()
    config.model = model_defaults()
    config.diffusion = diffusion_defaults()
    config.optim = optim_defaults()
    config.train = train_defaults()
    config.mesh = mesh_defaults()
    config.sampling = sampling_defaults()
    return config
