"""Defaults and checks for `config.sampling` (the inference settings `mdiff sample` uses)."""

from __future__ import annotations

import ml_collections


def sampling_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            steps=64,
            grid="linear",
            method="ancestral",
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            guidance=0.0,
        )
    )
