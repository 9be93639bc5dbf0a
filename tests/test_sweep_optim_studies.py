"""The optimiser studies' sweeps (batch, transfer, anti-masking): every point builds, and each grid has the shape
its claim needs (horizons, seeds, a warm-up equal in tokens, widths spanning 8x, lr steps of 2, equal data)."""

from __future__ import annotations

import math

import pytest

from mdiff.config import load_config
from mdiff.optim import sde
from mdiff.sweeps import expand, load_sweep
from mdiff.sweeps.define import override_args


def _configs(spec: str):
    sweep = load_sweep(spec)
    runs = expand(sweep)  # raises, naming the point, if any config is invalid or does not fit its devices
    return [load_config(sweep.config, override_args({**sweep.common, **r.overrides})) for r in runs]


@pytest.mark.parametrize("variant", ["cpu", "pod"])
def test_batch_grid(variant):
    configs = _configs(f"batch:{variant}")
    horizons = {c.train.tokens for c in configs}
    assert len(horizons) >= 2 and {c.optim.reparameterise for c in configs} == {False, True}
    for d in horizons:
        for mode in (False, True):
            sel = [c for c in configs if c.train.tokens == d and c.optim.reparameterise == mode]
            batches = {c.train.batch for c in sel}
            assert len(batches) >= 3 and all(sum(c.train.batch == b for c in sel) >= 3 for b in batches)  # >= 3 seeds
    warmups = {sde.plan(c).warmup_steps * c.train.batch * c.data.seq_len for c in configs}
    per_step = {c.train.batch * c.data.seq_len for c in configs}
    assert max(warmups) - min(warmups) < max(per_step)  # the same warm-up in tokens, up to one step's rounding


@pytest.mark.parametrize("variant", ["cpu", "pod"])
def test_transfer_grid(variant):
    configs = _configs(f"transfer:{variant}")
    depth_base = configs[0].optim.depth_base
    widths = {c.model.width for c in configs if c.model.depth == depth_base}
    assert len(widths) >= 4 and max(widths) / min(widths) >= 8
    assert len({c.model.depth for c in configs}) >= 2
    lrs = sorted({c.optim.lr for c in configs})
    assert len(lrs) >= 4 and all(math.isclose(b / a, 2.0) for a, b in zip(lrs, lrs[1:]))
    assert {c.optim.completep for c in configs} == {False, True} and len({c.seed for c in configs}) >= 2
    if variant == "cpu":  # the grid reaches past every optimum the 4-value grid found at its top edge, 3 seeds
        assert max(lrs) >= 9.6e-2 and len({c.seed for c in configs}) >= 3
    assert all(sde.plan(c).kappa == 1.0 and sde.plan(c).lr == c.optim.lr for c in configs)  # optim.lr is the lr used


@pytest.mark.parametrize("variant", ["cpu", "pod"])
def test_antimasking_arms_see_the_same_data(variant):
    configs = _configs(f"antimasking:{variant}")
    arms = {a: [c for c in configs if c.diffusion.anti_masking == a] for a in (False, True)}
    assert all(len(v) >= 3 for v in arms.values())
    # train.tokens counts computed tokens; with anti-masking half of them are distinct data (rows 2g, 2g+1).
    assert {c.train.tokens for c in arms[False]} == {c.train.tokens // 2 for c in arms[True]}
    assert {sde.plan(c).steps for c in configs} == {sde.plan(arms[False][0]).steps}  # same steps
    assert {(sde.plan(c).lr, sde.plan(c).b2) for c in configs} == {(sde.plan(arms[False][0]).lr, sde.plan(arms[False][0]).b2)}
