"""Batch analysis on synthetic tables whose answers follow from how they are built (analysis/batch.py).

Expected values come from the construction: B_crit = D / (L S_crit) where the rise starts, the naive optimum
B* = B_base (D / D_base)^gamma, kappa* = (D_base / D)^gamma B / B_base; the false-alarm rate of the B_crit
rule from its test level.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import batch
from analysis.errors import AnalysisError

L, S_CRIT = 128, 100.0


def test_b_crit_bracket_holds_the_true_critical_batch():
    # B_true = D / (L S_crit) = 78.1 and 312.5: the rise starts between the grid points around them.
    df = batch.synthetic_batch_table(horizons=(1e6, 4e6), s_crit=S_CRIT, seq_len=L, noise=0.01)
    crit = batch.critical_batches(batch.run_table(df), seq_len=L)
    assert list(crit.horizon) == [1e6, 4e6]  # reparameterised curves only
    for _, row in crit.iterrows():
        b_true = row.horizon / (L * S_CRIT)
        lo, hi = row.b_crit_bracket
        assert lo <= b_true < hi and hi == 2 * lo  # neighbouring grid points
        assert row.s_crit_bracket[0] <= S_CRIT <= row.s_crit_bracket[1]


def test_b_crit_needs_seeds():
    df = batch.synthetic_batch_table(seeds=1)
    with pytest.raises(AnalysisError, match=">= 2 seeds"):
        batch.critical_batches(batch.run_table(df), seq_len=L)


def _flat_curve(rng, rise_at: int | None, rise: float, seeds: int = 3, sd: float = 0.05):
    batches = np.array([4, 8, 16, 32, 64, 128])
    b = np.repeat(batches, seeds)
    y = 3.0 + sd * rng.standard_normal(len(b))
    if rise_at is not None:
        y = y + rise * (b >= batches[rise_at])
    return b, y


def test_no_false_b_crit_on_noise_beyond_the_test_level():
    """A flat noisy curve: the Bonferroni-divided tests raise a false B_crit at most alpha = 0.05 of the time
    (bound 0.08: 0.05 plus three binomial standard errors of 400 trials)."""
    rng = np.random.default_rng(0)
    alarms = sum(batch.critical_batch(*_flat_curve(rng, None, 0.0)).b_crit is not None for _ in range(400))
    assert alarms / 400 < 0.08


def test_welch_p_value_matches_scipy():
    from scipy import stats

    a, b = np.array([3.1, 3.3, 3.2]), np.array([3.0, 2.9, 3.05, 3.0, 2.95])
    assert batch.welch_greater(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def test_rise_of_many_standard_errors_is_found_at_its_batch():
    """A step of 10 sd from B = 32 is found there, except in the <= alpha = 5% of curves with an earlier false alarm."""
    rng = np.random.default_rng(1)
    found = [batch.critical_batch(*_flat_curve(rng, 3, 0.5)) for _ in range(100)]
    assert all(cb.b_hi is not None and cb.b_hi <= 32 for cb in found)  # never missed
    assert sum((cb.b_lo, cb.b_hi) == (16, 32) for cb in found) >= 90


def test_a_rise_within_the_noise_is_not_b_crit():
    """A 2% rule would call this 2.5% step B_crit; its runs are within their standard error (sd 0.5)."""
    b = np.repeat([8, 16, 32], 3)
    y = np.array([3.0, 2.5, 3.5, 3.0, 2.5, 3.5, 3.075, 2.575, 3.575])
    assert batch.critical_batch(b, y).b_crit is None


def test_a_falling_start_restarts_the_flat_level():
    b = np.repeat([4, 8, 16, 32], 3)
    y = np.array([4.0, 4.01, 3.99, 3.0, 3.01, 2.99, 3.0, 3.01, 2.99, 3.5, 3.51, 3.49])
    cb = batch.critical_batch(b, y)
    assert cb.flat_batches == [8, 16] and (cb.b_lo, cb.b_hi) == (16, 32)
    assert any("not flat below" in n for n in cb.notes)


def test_naive_optimum_and_gamma_from_naive_runs():
    # Naive loss is quadratic in log2(B / B*), B* = 32 (D / D_base)^0.44: the parabola vertex is exact.
    horizons = (1e6, 2e6, 4e6)
    df = batch.synthetic_batch_table(horizons=horizons, batches=(4, 8, 16, 32, 64, 128, 256), noise=0.0, seeds=2)
    d_base = float(np.exp(np.log(horizons).mean()))
    optima = batch.naive_optima(batch.run_table(df))
    assert np.allclose(optima.batch_opt, 32 * (optima.horizon / d_base) ** 0.44, rtol=1e-6)
    fit = batch.fit_gamma(df, n_bootstrap=50)
    assert fit.source == "naive" and fit.gamma == pytest.approx(0.44, abs=1e-6)


@pytest.mark.slow  # ~1 min on a busy 2-core machine
def test_gamma_interval_from_seeds_covers_the_truth():
    hits, trials = 0, 20
    for seed in range(trials):
        df = batch.synthetic_batch_table(horizons=(1e6, 4e6), batches=(4, 8, 16, 32, 64, 128, 256), noise=0.01, seeds=4, seed=seed)
        fit = batch.fit_gamma(df, source="naive", n_bootstrap=200, seed=seed)
        hits += fit.ci95[0] <= 0.44 <= fit.ci95[1]
    assert hits >= 0.75 * trials  # nominal 95%: far fewer covering intervals would mean a broken interval


def test_gamma_never_uses_an_edge_optimum():
    # Every naive optimum below the smallest batch: only bounds, so no gamma.
    df = batch.synthetic_batch_table(horizons=(1e6, 4e6), batches=(64, 128, 256, 512))
    with pytest.raises(AnalysisError, match="edge"):
        batch.fit_gamma(df, source="naive", n_bootstrap=10)


def _kappa_table(gamma=0.44, d_base=4e6, b_base=32, batch_size=64, seeds=2):
    rows = []
    for d in (1e6, 4e6, 16e6):
        k_star = (d_base / d) ** gamma * batch_size / b_base
        for k in k_star * np.geomspace(0.25, 4, 5) * 1.1:  # the optimum off the grid points
            for s in range(seeds):
                rows.append({"train.tokens": d, "train.batch": batch_size, "optim.reparameterise": True, "kappa": k,
                             "seed": s, "loss": 3 + 0.1 * (np.log(k) - np.log(k_star)) ** 2, "status": "complete"})
    return pd.DataFrame(rows)


def test_gamma_from_kappa_at_fixed_batch_and_horizon():
    fit = batch.fit_gamma(_kappa_table(), base_tokens=4e6, base_batch=32, n_bootstrap=20)
    assert fit.source == "kappa" and fit.gamma == pytest.approx(0.44, abs=1e-6)
    assert fit.intercept == pytest.approx(0.0, abs=1e-6)  # the base values are optimal at the base point


def test_gamma_never_pools_naive_with_reparameterised_runs():
    df = _kappa_table()
    naive = df.assign(**{"optim.reparameterise": False, "kappa": 1.0, "loss": 9.0})  # garbage naive runs
    both = pd.concat([df, naive], ignore_index=True)
    a = batch.fit_gamma(df, base_tokens=4e6, base_batch=32, n_bootstrap=0)
    b = batch.fit_gamma(both, base_tokens=4e6, base_batch=32, n_bootstrap=0)
    assert b.source == "kappa" and b.gamma == a.gamma


def test_configured_values_are_compared_with_the_measurement():
    df = batch.synthetic_batch_table(horizons=(1e6, 4e6), batches=(4, 8, 16, 32, 64, 128, 256, 512), noise=0.005, seeds=3, gamma=0.8)
    df["optim.gamma"], df["optim.steps_critical"] = 0.44, 100
    result = batch.analyse(df, n_bootstrap=200)
    rows = result.comparison.set_index("quantity")
    gamma_row = rows.loc["gamma (naive runs)"]
    assert gamma_row.configured == 0.44 and gamma_row.measured == pytest.approx(0.8, abs=0.05)
    assert gamma_row.agrees == "no"
    s_rows = rows[rows.index.str.startswith("S_crit")]
    assert len(s_rows) == 2 and set(s_rows.agrees) == {"yes"}
    json.dumps(result.to_json(), default=float)


def test_analyse_rejects_bad_settings():
    df = batch.synthetic_batch_table()
    with pytest.raises(AnalysisError, match="alpha"):
        batch.analyse(df, alpha=0.7)
    with pytest.raises(AnalysisError, match="bootstrap"):
        batch.analyse(df, n_bootstrap=-1)


def test_results_table_carries_the_optimiser_values_used(tmp_path):
    """results.csv holds the run's plan (kappa, lr, betas, eps, warm-up after reparameterisation) and the
    configured gamma, which the batch analysis compares with what it measures."""
    from mdiff.sweeps import state

    plan = dict(kappa=2.0, lr=0.004, b1=0.81, b2=0.9801, eps=5e-9, weight_decay=0.14, steps=50, warmup_steps=5,
                warmup_tokens=10240, steps_critical=40)
    run = tmp_path / "runs" / "p0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(dict(status="complete", loss=3.0, plan=plan)))
    (run / "config.json").write_text(json.dumps(dict(optim=dict(gamma=0.44, lr=0.002), train=dict(batch=32))))
    (tmp_path / "sweep.json").write_text(json.dumps(dict(sweep="x", axes=["train.batch"], points=[
        dict(name="p0", overrides={"train.batch": 32})])))
    df = pd.read_csv(state.write_results(tmp_path))
    row = df.iloc[0]
    for key, value in plan.items():
        assert row[key] == pytest.approx(value)
    assert row["optim.gamma"] == 0.44 and row["train.batch"] == 32 and row["status"] == "complete"


def test_gamma_from_one_seed_has_no_interval():
    df = batch.synthetic_batch_table(horizons=(1e6, 4e6), batches=(4, 8, 16, 32, 64, 128, 256), seeds=1)
    fit = batch.fit_gamma(df, source="naive", n_bootstrap=50)
    assert np.isnan(fit.ci95).all() and any("single run" in e for e in fit.excluded)
