"""Every shipped sweep (sweeps/*.py), every variant: each point builds a valid config that fits its devices."""

from __future__ import annotations

import pytest

from mdiff.sweeps import available_sweeps, expand, load_sweep
from mdiff.sweeps.expand import SWEEPS_DIR, _import

SHIPPED = [(name, variant) for name in available_sweeps() for variant in _import(SWEEPS_DIR / f"{name}.py").VARIANTS]


def test_the_paper_studies_are_shipped():
    assert {"scaling", "mixing", "schedules", "batch", "sampling", "symmetry"} <= set(available_sweeps())
    for name in ("scaling", "mixing", "schedules", "batch", "sampling", "symmetry"):
        variants = _import(SWEEPS_DIR / f"{name}.py").VARIANTS
        assert "cpu" in variants and "pod" in variants, name


def spec(name: str, variant: str) -> str:
    return f"{name}:{variant}" + (",run=/runs/trained" if name == "sampling" else "")  # sampling scores a trained run


@pytest.mark.parametrize("name,variant", SHIPPED, ids=[f"{n}:{v}" for n, v in SHIPPED])
def test_every_point_builds(name, variant):
    sweep = load_sweep(spec(name, variant))
    runs = expand(sweep)  # raises, naming each bad point, if any config is invalid or does not fit
    assert len(runs) == len(sweep.points) >= 2
    assert len({r.name for r in runs}) == len(runs)
    if variant == "pod":
        assert sweep.devices > 1


def test_sampling_sweep_needs_a_trained_run():
    from mdiff.sweeps import SweepError

    with pytest.raises(SweepError, match="scores a trained run"):
        load_sweep("sampling:cpu")
    sweep = load_sweep("sampling:cpu,run=/runs/trained")
    assert sweep.name == "sampling:cpu,run=/runs/trained"
    run = expand(sweep)[0]
    assert run.args("/w")[:2] == ["--run", "/runs/trained"] and run.module == "mdiff.sweeps.sample_point"
    assert all(k.startswith("sampling.") for r in expand(sweep) for k in r.overrides)


def test_cpu_scaling_is_an_isoflop_grid_for_a_real_fit():
    """4 sizes x 3 budgets (C, 2C, 4C); the points of a budget cost the same training FLOPs."""
    from mdiff.config import load_config
    from mdiff.model.scaling import PRESETS, flops_per_token
    from mdiff.sweeps.grids import vocab_size_of

    sweep = load_sweep("scaling:cpu")
    base = load_config(sweep.config)
    vocab, seq_len = vocab_size_of(base), base.data.seq_len
    assert vocab > 4096  # the embedded dataset's vocabulary, not the synthetic one
    runs = expand(sweep)
    assert len({r.overrides["model.size"] for r in runs}) == 4 and len(runs) == 12
    flops = sorted(flops_per_token(PRESETS[r.overrides["model.size"]], vocab, seq_len) * r.overrides["train.tokens"] for r in runs)
    groups = [flops[0:4], flops[4:8], flops[8:12]]
    for g in groups:
        assert max(g) / min(g) < 1.1, g
    assert groups[1][0] / groups[0][0] == pytest.approx(2, rel=0.1)
    assert groups[2][0] / groups[1][0] == pytest.approx(2, rel=0.1)


def test_cpu_wide_scaling_widens_the_quickstart_grid():
    """cpu-wide keeps the quickstart's 12 points (same names, so their runs can be reused) and adds cpu-l and an
    8C budget: at least 1.4 decades of non-embedding parameters and 1.6 decades of tokens."""
    import math

    from mdiff.config import load_config
    from mdiff.model.scaling import PRESETS, param_counts
    from mdiff.sweeps.grids import vocab_size_of

    quick, wide = expand(load_sweep("scaling:cpu")), expand(load_sweep("scaling:cpu-wide"))
    assert len(wide) == 20 and {r.name for r in quick} <= {r.name for r in wide}
    vocab = vocab_size_of(load_config(load_sweep("scaling:cpu-wide").config))
    n = [param_counts(PRESETS[r.overrides["model.size"]], vocab)["non_embedding"] for r in wide]
    d = [r.overrides["train.tokens"] for r in wide]
    assert math.log10(max(n) / min(n)) >= 1.4 and math.log10(max(d) / min(d)) >= 1.6


def test_cpu_below_adds_smaller_sizes_at_the_quickstart_budgets():
    """cpu-below keeps the quickstart's 12 points and adds two sizes below its smallest, at the same 3 budgets:
    each new size has fewer non-embedding parameters than cpu-xxs, and a budget's points cost the same FLOPs."""
    from mdiff.config import load_config
    from mdiff.model.scaling import PRESETS, flops_per_token, param_counts
    from mdiff.sweeps.grids import vocab_size_of

    quick, below = expand(load_sweep("scaling:cpu")), expand(load_sweep("scaling:cpu-below"))
    assert len(below) == 18 and {r.name for r in quick} <= {r.name for r in below}
    base = load_config(load_sweep("scaling:cpu-below").config)
    vocab, seq_len = vocab_size_of(base), base.data.seq_len
    n = {r.overrides["model.size"]: param_counts(PRESETS[r.overrides["model.size"]], vocab)["non_embedding"] for r in below}
    new = [size for size in n if size not in {r.overrides["model.size"] for r in quick}]
    assert len(new) == 2 and all(n[size] < n["cpu-xxs"] for size in new)
    flops = sorted(flops_per_token(PRESETS[r.overrides["model.size"]], vocab, seq_len) * r.overrides["train.tokens"] for r in below)
    for budget, group in zip((1.6e11, 3.2e11, 6.4e11), (flops[0:6], flops[6:12], flops[12:18])):
        assert all(abs(f / budget - 1) < 0.1 for f in group), (budget, group)


def test_cpu_mixing_and_schedule_studies_have_seeds():
    mixing = expand(load_sweep("mixing:cpu"))
    mixes = {tuple(r.overrides[f"data.mix.{m}"] for m in ("text", "image", "audio")) for r in mixing}
    assert len(mixes) == 6 and all(abs(sum(m) - 1) < 1e-9 and min(m) >= 0.2 - 1e-9 for m in mixes)
    assert {r.overrides["seed"] for r in mixing} == {0, 1, 2} and len(mixing) == 18  # every mix at 3 seeds
    schedules = expand(load_sweep("schedules:cpu"))
    per_run = [{r.overrides[f"diffusion.schedule.{m}"] for m in ("text", "image", "audio")} for r in schedules]
    assert all(len(s) == 1 for s in per_run) and len({frozenset(s) for s in per_run}) == 3
    assert {r.overrides["seed"] for r in schedules} == {0, 1} and len(schedules) == 6


def test_symmetry_vae_is_sizes_by_seeds_with_every_vae_early_stopped():
    """The data-efficiency study: >= 3 seeds at each of >= 2 training-set sizes spanning >= 8x; every cell trains
    all four VAE kinds and stops each on its validation ELBO (patience > 0, checks well inside the step cap)."""
    from mdiff.config import load_config
    from mdiff.sweeps.define import override_args

    sweep = load_sweep("symmetry:vae")
    runs = expand(sweep)
    sizes = {r.overrides["data.num_train"] for r in runs}
    assert max(sizes) / min(sizes) >= 8
    assert all(sum(r.overrides["data.num_train"] == n for r in runs) >= 3 for n in sizes)
    config = load_config(sweep.config, override_args(sweep.common))
    assert set(config.vae.models) == {"vae", "augvae", "protovae", "invvae"}
    # sweeps/ may not import mdiff.symmetry (ARCHITECTURE.md), so its list of kinds is a copy: it must stay whole.
    from mdiff.symmetry.defaults import VAE_MODELS

    assert set(config.vae.models) == set(VAE_MODELS)
    assert config.vae.patience > 0 and config.vae.valid_every * (config.vae.patience + 2) < config.vae.steps
