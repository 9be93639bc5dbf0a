"""Grids that need to know the model: IsoFLOP points (same training compute, several model sizes).

Training FLOPs per token come from `mdiff.model.scaling.flops_per_token` (the count the trainer logs),
so every point of one budget trains for (nearly) the same compute; horizons are rounded to whole steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from mdiff.sweeps.define import Point, SweepError


def vocab_size_of(config) -> int:
    """The unified vocabulary a config's data section builds (specials + text + image + audio codes)."""
    from mdiff.data.corpus import SYNTHETIC_VOCAB
    from mdiff.vocab import SPECIAL_TOKENS

    data = config.data
    if data.dataset == "synthetic":
        return SYNTHETIC_VOCAB.size
    tok = data.tokenizer
    return len(SPECIAL_TOKENS) + tok.text_vocab + tok.image_codebook + tok.audio_codebook


def isoflop(
    config: str,
    sizes: Sequence[str | Point],
    budgets: Sequence[float],
    *,
    min_steps: int = 1,
    common: Point | None = None,
    size_key: str = "model.size",
    tokens_key: str = "train.tokens",
) -> list[Point]:
    """For each compute budget C (FLOPs), each size gets the horizon D = C / flops_per_token(size).

    A size is a preset name (set as `size_key`) or a dict of explicit shape overrides
    ({"model.width": 512, "model.depth": 8, ...}, merged into the point as they are); such a sweep sets
    `common={"model.size": ""}` so the explicit shape, not the base config's preset, is trained.

    `common` are the sweep's common overrides (a different batch changes the step size).
    Horizons are whole steps of the config's batch x seq_len; a point with fewer than `min_steps`
    steps is an error (the budget is too small for that size), so grids never silently degenerate.
    """
    from mdiff.config import apply_overrides, load_config
    from mdiff.model.scaling import PRESETS, flops_per_token, resolve_shape

    base = load_config(config, check=False).copy_and_resolve_references()
    apply_overrides(base, dict(common or {}))
    step_tokens = base.train.batch * base.data.seq_len
    vocab = vocab_size_of(base)
    points = []
    for budget in budgets:
        for size in sizes:
            if isinstance(size, str):
                if size not in PRESETS:
                    raise SweepError(f"isoflop: unknown size {size!r}; presets: {', '.join(PRESETS)}")
                shape, point = PRESETS[size], {size_key: size}
            else:
                model = apply_overrides(base.model.copy_and_resolve_references(), {"size": "", **{k.removeprefix("model."): v for k, v in size.items()}})
                shape, point = resolve_shape(model), dict(size)
            steps = round(budget / flops_per_token(shape, vocab, base.data.seq_len) / step_tokens)
            if steps < min_steps:
                raise SweepError(
                    f"isoflop: budget {budget:.3g} FLOPs gives {size} only {steps} steps (< {min_steps}); "
                    "raise the budget or drop the size"
                )
            points.append({**point, tokens_key: steps * step_tokens})
    return points
