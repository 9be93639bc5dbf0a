"""Parametric scaling-law fit: recovery of known parameters, the Epoch AI Chinchilla replication, the batched
bootstrap against the scalar reference, interval coverage, compute-optimal allocation, bad input, CLI."""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from analysis import commands, scaling, table
from analysis.errors import AnalysisError

DATA = pathlib.Path(__file__).parent / "data"
TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
QUICK = dict(diagnostics=False, validate=False)  # for tests of the estimates alone (diagnostics: test_analysis_fit_checks)


def chinchilla_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epoch's 245 extracted runs minus the five highest-loss ones (the replication's 240 points)."""
    df = pd.read_csv(DATA / "chinchilla_svg_extracted_data.csv")
    n, c, loss = (df[k].to_numpy(float) for k in ("Model Size", "Training FLOP", "loss"))
    keep = np.argsort(loss)[:-5]
    return n[keep], c[keep] / (6 * n[keep]), loss[keep]


def test_recovers_known_parameters_from_noisy_synthetic_data():
    df = scaling.synthetic_table(TRUTH, 150, noise=0.005, seed=1)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=0, n_starts=8, **QUICK)
    p = fit.params
    assert abs(p["alpha"] - TRUTH["alpha"]) < 0.03 and abs(p["beta"] - TRUTH["beta"]) < 0.03
    assert abs(p["E"] / TRUTH["E"] - 1) < 0.05
    assert abs(np.log(p["A"] / TRUTH["A"])) < 0.5 and abs(np.log(p["B"] / TRUTH["B"])) < 0.5
    assert abs(fit.compute_optimal()["a"] - TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])) < 0.03


def test_exact_data_is_fitted_exactly():
    df = scaling.synthetic_table(TRUTH, 60, noise=0.0, seed=2)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=0, n_starts=8, **QUICK)
    np.testing.assert_allclose([fit.params[k] for k in scaling.PARAMS], [TRUTH[k] for k in scaling.PARAMS], rtol=2e-3)


def test_reproduces_epoch_chinchilla_replication_within_published_intervals():
    published = json.loads((DATA / "chinchilla_epoch_published.json").read_text())
    n, d, loss = chinchilla_points()
    assert len(n) == published["n_points"]
    fit = scaling.fit_arrays(n, d, loss, n_bootstrap=200, seed=0)
    assert fit.identifiable, fit.reasons  # 240 runs over ~2.5 decades: the diagnostics must not flag a published fit
    ours = {**fit.params, "a": fit.compute_optimal()["a"]}
    ci = fit.intervals()
    for name, estimate in published["estimates"].items():
        half = 1.96 * published["standard_errors"][name]
        assert estimate - half <= ours[name] <= estimate + half, (name, ours[name], estimate, half)
        assert ci[name][0] <= estimate <= ci[name][1], (name, ci[name], estimate)  # our interval covers theirs
    # The exponents agree far more tightly than the intervals require.
    assert abs(ours["alpha"] - 0.3478) < 0.005 and abs(ours["beta"] - 0.3658) < 0.005 and abs(ours["E"] - 1.8172) < 0.005


def test_batched_bootstrap_matches_scalar_lbfgs_reference():
    n, d, loss = chinchilla_points()
    layout = scaling.Layout(("loss",))
    lo, hi = scaling.phi_bounds(layout)
    data = scaling.stack_data(np.log(n), np.log(d), [np.log(loss)], np.ones(len(n)), layout)
    candidates = scaling.candidate_starts(data, layout, lo, hi, 1e-3)
    best = scaling.multistart(data, candidates, 1e-3, lo, hi, n_starts=8)[0]
    options = dict(n_bootstrap=5, seed=7)
    fast = scaling.bootstrap_phis(data, candidates, best.phi, 1e-3, lo, hi, backend="numpy", **options)
    slow = scaling.bootstrap_phis(data, candidates, best.phi, 1e-3, lo, hi, backend="scipy", workers=1, **options)
    # Same optimum from the same starts: the vectorised solver's objective is never worse, and the parameters agree
    # (log B sits in a flat valley, so it gets a looser tolerance than the exponents).
    for counts, f, s in zip(scaling.bootstrap_counts(len(n), 5, 7), fast, slow):
        sample = data.reweight(counts)
        assert scaling.objective(f, sample, 1e-3)[0] <= scaling.objective(s, sample, 1e-3)[0] + 1e-10
    np.testing.assert_allclose(fast[:, 3:], slow[:, 3:], atol=2e-3)
    np.testing.assert_allclose(fast[:, :3], slow[:, :3], atol=3e-2)


def test_bootstrap_is_seeded_and_independent_of_worker_count(monkeypatch):
    monkeypatch.setattr(scaling, "MIN_WORK_PER_PROCESS", 1)  # two processes even for this small problem
    df = scaling.synthetic_table(TRUTH, 60, noise=0.01, seed=3)
    a = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=130, seed=5, workers=1, n_starts=8, **QUICK)
    b = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=130, seed=5, workers=2, n_starts=8, **QUICK)
    np.testing.assert_allclose(a.bootstrap, b.bootstrap, rtol=1e-9)


def _coverage(draws: int, n_boot: int, n_points: int) -> dict[str, float]:
    hits = {p: 0 for p in scaling.PARAMS}
    for seed in range(draws):
        df = scaling.synthetic_table(TRUTH, n_points, noise=0.01, seed=100 + seed)
        fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=n_boot, seed=seed, n_starts=8, workers=1, **QUICK)
        ci = fit.intervals()
        for p in scaling.PARAMS:
            hits[p] += ci[p][0] <= TRUTH[p] <= ci[p][1]
    return {p: h / draws for p, h in hits.items()}


def test_bootstrap_intervals_cover_the_truth_fast():
    coverage = _coverage(draws=10, n_boot=100, n_points=80)
    assert np.mean(list(coverage.values())) >= 0.8, coverage


@pytest.mark.slow
def test_bootstrap_intervals_have_nominal_coverage():
    coverage = _coverage(draws=100, n_boot=300, n_points=120)
    for p, c in coverage.items():
        assert 0.85 <= c <= 0.995, (p, c)


def test_confidence_band_inside_prediction_band():
    df = scaling.synthetic_table(TRUTH, 80, noise=0.01, seed=4)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=100, n_starts=8, **QUICK)
    n = np.geomspace(1e7, 1e10, 7)
    bands = fit.loss_bands(n, 20 * n)
    assert (bands["pred_hi"] - bands["pred_lo"] > bands["conf_hi"] - bands["conf_lo"]).all()  # new runs scatter too
    assert (bands["conf_lo"] <= bands["loss"] * 1.001).all() and (bands["loss"] <= bands["conf_hi"] * 1.001).all()


def test_compute_optimal_allocation_matches_numerical_minimum():
    for k in (6.0, 7.5):
        c = 1e22
        n_star, d_star = scaling.optimal_allocation(TRUTH, c, k)
        res = optimize.minimize_scalar(lambda x: float(scaling.predict_loss(TRUTH, np.exp(x), c / (k * np.exp(x)))),
                                       bounds=(np.log(1e6), np.log(1e14)), method="bounded", options=dict(xatol=1e-10))
        assert abs(np.log(n_star) - res.x) < 1e-4
        assert d_star == pytest.approx(c / (k * n_star), rel=1e-9)
    opt = scaling.compute_optimal(TRUTH)
    assert opt["a"] + opt["b"] == pytest.approx(1.0)


def test_bounds_and_weights():
    df = scaling.synthetic_table(TRUTH, 60, noise=0.01, seed=6)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=40, n_starts=4, bounds={"alpha": (0.0, 0.3)}, **QUICK)
    assert fit.params["alpha"] <= 0.3 + 1e-12 and (fit.bootstrap[:, 3] <= 0.3 + 1e-12).all()
    w = np.ones(len(df))
    w[:30] = 0.0  # only the second half counts: same as fitting it alone
    weighted = scaling.fit_arrays(df.params, df.tokens, df.loss, weights=w, n_bootstrap=0, n_starts=4, **QUICK)
    alone = scaling.fit_arrays(df.params[30:], df.tokens[30:], df.loss[30:], n_bootstrap=0, n_starts=4, **QUICK)
    np.testing.assert_allclose(weighted.theta, alone.theta, atol=1e-4)
    with pytest.raises(AnalysisError, match="unknown parameter"):
        scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=0, bounds={"gamma": (0, 1)})


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def _csv(tmp_path, df: pd.DataFrame) -> pathlib.Path:
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    return path


def test_missing_column_is_named(tmp_path):
    df = table.read_table(_csv(tmp_path, scaling.synthetic_table(TRUTH, 20).drop(columns=["tokens"])))
    with pytest.raises(AnalysisError, match="missing column.*'tokens'"):
        scaling.fit_scaling_law(df)


def test_missing_loss_column_is_named(tmp_path):
    df = table.read_table(_csv(tmp_path, scaling.synthetic_table(TRUTH, 20)))
    with pytest.raises(AnalysisError, match="loss column 'loss_text' does not exist"):
        scaling.fit_scaling_law(df, "loss_text")


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_non_positive_or_non_finite_values_name_column_and_line(tmp_path, bad):
    frame = scaling.synthetic_table(TRUTH, 20)
    frame.loc[3, "params"] = bad
    df = table.read_table(_csv(tmp_path, frame))
    with pytest.raises(AnalysisError, match=r"column 'params'.*line\(s\) 5\b"):
        scaling.fit_scaling_law(df)


def test_too_few_points(tmp_path):
    df = table.read_table(_csv(tmp_path, scaling.synthetic_table(TRUTH, 5)))
    with pytest.raises(AnalysisError, match="more than 5 points.*got 5"):
        scaling.fit_scaling_law(df)


def test_unreadable_or_empty_csv(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        table.read_table(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(AnalysisError, match="not a readable CSV"):
        table.read_table(empty)
    header = tmp_path / "header.csv"
    header.write_text("params,tokens,loss\n")
    with pytest.raises(AnalysisError, match="no rows"):
        table.read_table(header)


def test_incomplete_runs_are_excluded_with_a_note(tmp_path):
    frame = scaling.synthetic_table(TRUTH, 30, noise=0.0)
    frame["name"] = [f"run{i}" for i in range(30)]
    frame["status"] = "complete"
    frame.loc[[2, 7], "status"] = ["failed", "preempted"]
    frame.loc[2, "loss"] = np.nan  # a failed run has no loss: must not be an error
    df = table.read_table(_csv(tmp_path, frame))
    fit = scaling.fit_scaling_law(df, n_bootstrap=0, n_starts=2, **QUICK)
    assert fit.n_points == 28
    assert "excluded 2 run(s)" in fit.notes[0] and "run2 (failed)" in fit.notes[0] and "run7 (preempted)" in fit.notes[0]


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _fit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.configure_fit(parser)
    return parser.parse_args(list(argv))


def test_cli_scaling_writes_fit_json_and_plots(tmp_path):
    frame = scaling.synthetic_table(TRUTH, 60, noise=0.01, seed=8)
    frame["loss_text"] = frame.loss * 1.1
    path = _csv(tmp_path, frame)
    out = tmp_path / "fit"
    args = _fit_args("scaling", "--results", str(path), "--out", str(out), "--bootstrap", "50", "--starts", "4",
                     "--per-modality", "--bound", "alpha=0:2")
    assert commands.run_fit(args) == 0
    fit = json.loads((out / "fit.json").read_text())
    for key in ("E", "A", "B", "alpha", "beta", "ci95", "n_points", "huber_delta", "compute_optimal", "a", "b"):
        assert key in fit
    assert set(fit["ci95"]) == set(scaling.PARAMS) and fit["n_points"] == 60 and fit["huber_delta"] == 1e-3
    assert {"a", "b", "N_coefficient", "D_coefficient"} <= set(fit["compute_optimal"])
    for name in ("loss_vs_compute", "fitted_vs_observed", "per_modality"):
        for ext in (".png", ".pdf"):
            assert (out / (name + ext)).stat().st_size > 1000
    assert "loss_text" in json.loads((out / "per_modality.json").read_text())


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    path = _csv(tmp_path, scaling.synthetic_table(TRUTH, 20))
    args = _fit_args("scaling", "--results", str(path), "--out", str(tmp_path / "o"), "--loss", "nope")
    assert commands.run_fit(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and err.startswith("mdiff fit: error:")
