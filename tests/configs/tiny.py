"""A small config file for testing the config system (not an experiment)."""

from mdiff.defaults import base_config

VARIANTS = ("small", "wide")


def get_config(variant: str):
    config = base_config()
    config.name = f"tiny-{variant}"
    config.model.width = 64 if variant == "small" else 128
    config.model.heads = 4
    config.model.depth = 2
    config.data.dataset = "synthetic"
    config.data.seq_len = 32
    config.train.batch = 8
    config.train.tokens = 8 * 32 * 4
    return config
