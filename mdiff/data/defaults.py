"""Defaults and checks for `config.data` (owned by the data pipeline)."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator


def data_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            dataset="embedded",  # the offline tri-modal set, or a TFDS ArrayRecord directory with its features
            data_dir="",  # "" -> $MDIFF_DATA_DIR or ~/.cache/mdiff/data
            seq_len=128,
            # Token fractions of each modality in the training stream; must sum to 1.
            mix=dict(text=0.5, image=0.25, audio=0.25),
            num_workers=0,
        )
    )


@register_validator("data")
def validate_data(config: ConfigDict) -> None:
    data = config.data
    if data.seq_len < 8:
        fail("data.seq_len", data.seq_len, "must be at least 8")
    mix = dict(data.mix)
    for name, value in mix.items():
        if value < 0:
            fail(f"data.mix.{name}", value, "mixing fractions must be >= 0")
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        fail("data.mix", mix, f"fractions must sum to 1 (they sum to {total:.6g})")
