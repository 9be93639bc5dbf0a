"""IsoFLOP, batch-size, gamma, mixing and schedule analyses on synthetic tables with known answers; every plot
function writes a non-empty PNG and PDF."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import batch, commands, isoflop, mixing, plots, scaling, schedules
from analysis.errors import AnalysisError

TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])


def test_isoflop_recovers_compute_optimal_exponents():
    df = isoflop.synthetic_isoflop_table(TRUTH, span=4.0, sizes_per_budget=9)
    fit = isoflop.fit_isoflop(df, n_bootstrap=50)
    assert abs(fit.a - A_TRUE) < 0.02 and abs(fit.b - (1 - A_TRUE)) < 0.02
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-9)  # D* = C / (6 N*) exactly
    n_true, _ = scaling.optimal_allocation(TRUTH, fit.budgets.compute.to_numpy())
    np.testing.assert_allclose(fit.budgets.n_opt, n_true, rtol=0.1)


def test_isoflop_intervals_cover_truth_with_noise():
    df = isoflop.synthetic_isoflop_table(TRUTH, span=4.0, noise=0.003, seed=3)
    fit = isoflop.fit_isoflop(df, n_bootstrap=200, seed=1)
    assert fit.ci95["a"][0] < A_TRUE < fit.ci95["a"][1]


def test_isoflop_needs_two_budgets():
    df = isoflop.synthetic_isoflop_table(TRUTH, budgets=(1e19,))
    with pytest.raises(AnalysisError, match="at least 2 compute budgets"):
        isoflop.fit_isoflop(df, n_bootstrap=0)


def _mixing_table(noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for t, i in [(a / 4, b / 4) for a in range(5) for b in range(5) if a + b <= 4]:
        a = 1 - t - i
        fr = dict(text=t, image=i, audio=a)
        row = {f"data.mix.{m}": v for m, v in fr.items()}
        for m, v in fr.items():  # each modality's loss falls with its share: 3 - log(0.1 + share)
            row[f"loss_{m}"] = 3 - np.log(0.1 + v) + noise * rng.standard_normal()
        rows.append(dict(row, status="complete"))
    return pd.DataFrame(rows)


def test_mixing_best_mix_and_quadratic_model():
    result = mixing.analyse_mixing(_mixing_table(), normalise=False)
    assert result.modalities == ["text", "image", "audio"]
    # symmetric losses: the balanced grid point nearest 1/3 each is best observed; the model optimum is near 1/3.
    assert max(result.best_observed[m] for m in result.modalities) <= 0.5
    assert all(abs(result.best_predicted[m] - 1 / 3) < 0.05 for m in result.modalities)
    objective = result.frame.objective.to_numpy()
    assert result.best_observed["objective"] == pytest.approx(objective.min())


def test_mixing_requires_mix_columns():
    with pytest.raises(AnalysisError, match="mix columns"):
        mixing.analyse_mixing(pd.DataFrame(dict(loss=[1.0, 2.0])))


def test_schedule_intervals_are_student_t():
    rows = []
    for s, base in (("linear", 3.0), ("cosine", 2.9)):
        for seed in range(4):
            rows.append({"diffusion.schedule.text": s, "seed": seed, "loss": base + 0.01 * seed, "loss_text": base, "status": "complete"})
    summary = schedules.schedule_summary(pd.DataFrame(rows))
    row = summary[(summary.schedule == "linear") & (summary.loss_column == "loss")].iloc[0]
    values = 3.0 + 0.01 * np.arange(4)
    half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert row["mean"] == pytest.approx(values.mean()) and row.ci_hi - row["mean"] == pytest.approx(half)
    assert row.n_seeds == 4


def _nonempty(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.stat().st_size > 1000


def test_every_plot_function_writes_images(tmp_path):
    df = scaling.synthetic_table(TRUTH, 40, noise=0.01)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=30, n_starts=4)
    _nonempty(plots.loss_vs_compute(df.params, df.tokens, df.loss, fit, tmp_path / "a"))
    _nonempty(plots.fitted_vs_observed(df.params, df.tokens, df.loss, fit, tmp_path / "b"))
    _nonempty(plots.per_modality({"loss_text": fit}, {"loss_text": (df.params, df.tokens, df.loss)}, tmp_path / "c"))
    iso = isoflop.synthetic_isoflop_table(TRUTH)
    ifit = isoflop.fit_isoflop(iso, n_bootstrap=10)
    _nonempty(plots.isoflop_curves(iso.params, iso.loss, iso.flops, ifit, tmp_path / "d"))
    result = batch.analyse(batch.synthetic_batch_table(batches=(4, 8, 16, 32, 64, 128, 256, 512)), n_bootstrap=20)
    _nonempty(plots.batch_curves(result.curves, result.critical, tmp_path / "e"))
    _nonempty(plots.gamma_fit(result.gamma, tmp_path / "f"))
    _nonempty(plots.mixing(mixing.analyse_mixing(_mixing_table()), tmp_path / "g"))
    two = _mixing_table().query("`data.mix.audio` == 0").drop(columns=["data.mix.audio", "loss_audio"])
    _nonempty(plots.mixing(mixing.analyse_mixing(two), tmp_path / "g2"))
    sched = pd.DataFrame([{"diffusion.schedule": s, "loss": 3 + i + 0.01 * k, "status": "complete"}
                          for i, s in enumerate(("linear", "cosine")) for k in range(3)])
    _nonempty(plots.schedules(schedules.schedule_summary(sched), tmp_path / "h"))
    samp = pd.DataFrame([dict(steps=s, fid=100 / s + k, status="complete") for s in (8, 16, 32, 64) for k in range(2)])
    _nonempty(plots.sampling_quality(schedules.sampling_summary(samp, "steps", ["fid"]), tmp_path / "i", ylabel="FID"))


def _args(*argv):
    parser = argparse.ArgumentParser()
    commands.configure_fit(parser)
    return parser.parse_args(list(argv))


def test_cli_subcommands(tmp_path):
    iso = tmp_path / "iso.csv"
    isoflop.synthetic_isoflop_table(TRUTH).to_csv(iso, index=False)
    assert commands.run_fit(_args("isoflop", "--results", str(iso), "--out", str(tmp_path / "i"), "--bootstrap", "20")) == 0
    assert json.loads((tmp_path / "i" / "isoflop.json").read_text())["a"] == pytest.approx(A_TRUE, abs=0.03)
    b = tmp_path / "batch.csv"
    batch.synthetic_batch_table().to_csv(b, index=False)
    assert commands.run_fit(_args("batch", "--results", str(b), "--out", str(tmp_path / "b"))) == 0
    assert (tmp_path / "b" / "batch_curves.png").exists()
    m = tmp_path / "mix.csv"
    _mixing_table().to_csv(m, index=False)
    assert commands.run_fit(_args("mixing", "--results", str(m), "--out", str(tmp_path / "m"), "--weights", "loss_text=2,loss_image=1")) == 0
    assert json.loads((tmp_path / "m" / "mixing.json").read_text())["weights"] == {"loss_text": 2.0, "loss_image": 1.0}
    assert commands.run_fit(_args("schedules", "--results", str(m), "--out", str(tmp_path / "s"))) == 2
