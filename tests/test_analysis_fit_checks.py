"""Checks a scaling-law fit must pass before it is quoted: the identifiability verdict on data where the answer is
known (identified and recovered; not identified, with the right reason; the quickstart's own grid), validation by
extrapolation, fixed-E and shared-exponent fits, both parameter conventions, compute from the logged FLOPs, and
bad input that must stop with one line and write nothing."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from analysis import commands, isoflop, scaling
from analysis.errors import AnalysisError

TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# What the quickstart printed for loss_image from its 12 runs (one decade in N and D).
QUICKSTART_IMAGE_FIT = dict(E=0.0146, A=6.57, B=4330.0, alpha=0.00858, beta=0.807)
FAST = dict(n_bootstrap=40, n_starts=8)


def quickstart_grid() -> pd.DataFrame:
    """The quickstart sweep's 12 runs (4 CPU presets x 3 budgets): N with and without embeddings, tokens and
    FLOPs per token from the sweep definition and the model's exact counts (preset reference vocabulary)."""
    from mdiff.model import scaling as model_scaling
    from mdiff.sweeps.expand import expand, load_sweep

    rows = []
    for point in expand(load_sweep("scaling:cpu")):
        shape = model_scaling.PRESETS[point.overrides["model.size"]]
        counts = model_scaling.param_counts(shape, shape.reference_vocab)
        per_token = model_scaling.flops_per_token(shape, shape.reference_vocab, 128)
        tokens = float(point.overrides["train.tokens"])
        rows.append(dict(params=counts["non_embedding"], params_total=counts["total"], tokens=tokens,
                         flops_per_token=per_token, flops=per_token * tokens, status="complete"))
    return pd.DataFrame(rows)


def _noisy(law, n, d, seed: int, noise: float = 0.01) -> np.ndarray:
    return scaling.predict_loss(law, n, d) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(n)))


# ------------------------------------------------------------------------------------------------
# Identifiable: recovered, verdict true, validated
# ------------------------------------------------------------------------------------------------
def test_wide_span_synthetic_law_is_identified_recovered_and_validated():
    df = scaling.synthetic_table(TRUTH, 60, noise=0.01, seed=11)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, seed=1, **FAST)
    assert fit.identifiable, fit.reasons
    dg = fit.diagnostics
    assert dg["convergence"]["best_converged"] and dg["span_decades"]["N"] > 2.5
    assert abs(fit.params["alpha"] - TRUTH["alpha"]) < 0.05 and abs(fit.params["E"] / TRUTH["E"] - 1) < 0.1
    for name in ("E", "alpha", "beta"):  # finite profile intervals that hold the truth
        prof = dg["profiles"][name]
        assert not prof["reaches_edge"]
        assert prof["flat_range"][0] - 0.1 <= TRUTH[name] <= prof["flat_range"][1] + 0.1  # 0.1: the profile grid's step
    v = fit.validation
    assert v["held_out"] >= 12 and v["trained_on"] + v["held_out"] == 60  # top 20% by compute
    assert v["mean_abs_rel_error"] < 0.02  # the law is right: the held-out runs are predicted to ~ the 1% noise
    lo, hi = v["mean_abs_rel_error_ci"]
    assert lo <= v["mean_abs_rel_error"] * 1.5 and hi < 0.05
    assert v["inside_prediction_band"] >= 0.8 * v["held_out"]
    j = json.loads(json.dumps(fit.to_json()))
    assert j["identifiable"] is True and j["status"] == "identified" and j["n_bootstrap"] == 40


def test_validation_catches_a_law_that_does_not_extrapolate():
    """Data whose loss bends at large compute (a floor the law has no term for): the held-out error is large."""
    df = scaling.synthetic_table(TRUTH, 60, noise=0.005, seed=12)
    compute = 6 * df.params * df.tokens
    bent = df.loss * np.where(compute > np.quantile(compute, 0.8), 1.15, 1.0)
    fit = scaling.fit_arrays(df.params, df.tokens, bent, seed=1, **FAST)
    assert fit.validation["mean_abs_rel_error"] > 0.05
    assert fit.validation["inside_prediction_band"] < fit.validation["held_out"] / 2


# ------------------------------------------------------------------------------------------------
# Not identifiable: flagged with the right reason
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_grid_with_its_reported_law_is_flagged(seed):
    grid = quickstart_grid()
    assert len(grid) == 12 and np.log10(grid.params.max() / grid.params.min()) < 1.2
    table = grid.assign(loss_image=_noisy(QUICKSTART_IMAGE_FIT, grid.params, grid.tokens, seed))
    fit = scaling.fit_scaling_law(table, "loss_image", **FAST)
    assert not fit.identifiable
    assert any(r.startswith("E is not pinned down") for r in fit.reasons), fit.reasons
    assert fit.diagnostics["profiles"]["E"]["reaches_edge"]
    lo, hi = fit.diagnostics["allowed_ranges"]["E"]
    assert lo < 0.01 * hi  # the range the data allow spans decades
    out = fit.to_json()
    assert out["identifiable"] is False and out["status"].startswith("not identifiable")


def test_negligible_exponent_is_flagged_as_trading_off_against_e():
    law = dict(E=1.69, A=3.0, B=410.7, alpha=0.003, beta=0.28)  # A/N^alpha changes ~2% over three decades of N
    df = scaling.synthetic_table(law, 60, noise=0.01, seed=1)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, **FAST)
    assert not fit.identifiable
    assert any("A/N^alpha changes by" in r or r.startswith(("E is not pinned down", "alpha is not pinned down"))
               for r in fit.reasons), fit.reasons


def test_bound_hit_is_a_reason():
    df = scaling.synthetic_table(TRUTH, 60, noise=0.01, seed=6)
    fit = scaling.fit_arrays(df.params, df.tokens, df.loss, bounds={"alpha": (0.0, 0.2)}, **FAST)
    assert fit.params["alpha"] == pytest.approx(0.2)
    assert fit.diagnostics["at_bounds"] == [dict(parameter="alpha", side="upper", bound=0.2)]
    assert any("alpha = 0.2 sits at its upper bound" in r for r in fit.reasons)


def test_profile_threshold_is_the_laplace_likelihood_ratio():
    # n equal weights: exp(chi2_1(0.95) / (2 n)); chi2_1(0.95) = 1.959964^2
    layout = scaling.Layout(("loss",))
    data = scaling.stack_data(np.zeros(12), np.zeros(12), [np.zeros(12)], np.ones(12), layout)
    assert scaling.profile_threshold(data) == pytest.approx(np.exp(1.959964**2 / 24), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Fixed E and shared exponents
# ------------------------------------------------------------------------------------------------
def test_fixed_e_is_held_and_labelled():
    grid = quickstart_grid()
    law = dict(E=2.0, A=30.0, B=200.0, alpha=0.3, beta=0.4)
    table = grid.assign(loss=_noisy(law, grid.params, grid.tokens, 2))
    fit = scaling.fit_scaling_law(table, fixed={"E": 2.0}, fixed_source="test truth", **FAST)
    assert fit.params["E"] == pytest.approx(2.0, rel=1e-12)
    assert np.allclose(np.exp(fit.bootstrap[:, 0]), 2.0)
    assert "E" not in fit.diagnostics["profiles"]  # a fixed parameter is not estimated
    j = fit.to_json()
    assert j["constraints"]["fixed"] == {"E": {"value": 2.0, "source": "test truth"}}
    assert fit.label() == "E fixed at 2 (test truth)"


def test_shared_exponents_recover_common_alpha_beta_and_per_loss_terms():
    df = scaling.synthetic_table(TRUTH, 50, noise=0.01, seed=5)
    other = dict(E=0.9, A=150.0, B=900.0, alpha=TRUTH["alpha"], beta=TRUTH["beta"])
    df["loss_b"] = _noisy(other, df.params, df.tokens, 1)
    fits = scaling.fit_table(df, ["loss", "loss_b"], shared=("alpha", "beta"), **FAST)
    a, b = fits["loss"], fits["loss_b"]
    assert a.params["alpha"] == b.params["alpha"] and a.params["beta"] == b.params["beta"]
    assert abs(a.params["alpha"] - TRUTH["alpha"]) < 0.03 and abs(a.params["beta"] - TRUTH["beta"]) < 0.03
    assert abs(a.params["E"] / TRUTH["E"] - 1) < 0.1 and abs(b.params["E"] / other["E"] - 1) < 0.1
    np.testing.assert_array_equal(a.bootstrap[:, 3:], b.bootstrap[:, 3:])  # one joint bootstrap over runs
    assert a.to_json()["constraints"]["shared"] == {"parameters": ["alpha", "beta"], "with": ["loss", "loss_b"]}
    assert a.identifiable and b.identifiable, (a.reasons, b.reasons)


def test_shared_layout_gradient_matches_finite_differences():
    layout = scaling.Layout(("x", "y"), ("alpha", "beta"))
    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(15, 22, 20), rng.uniform(20, 27, 20)
    data = scaling.stack_data(log_n, log_d, [rng.uniform(0.5, 1.5, 20), rng.uniform(0.0, 1.0, 20)], np.ones(20), layout)
    phi = np.array([0.5, 6.0, 6.5, -0.1, 7.0, 5.0, 0.3, 0.3])
    assert layout.size == 8 and list(layout.index(1)) == [3, 4, 5, 6, 7]
    fd = optimize.approx_fprime(phi, lambda p: scaling.objective(p, data, 1.0)[0], 1e-7)
    np.testing.assert_allclose(scaling.objective(phi, data, 1.0)[1], fd, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Compute from the logs; N conventions
# ------------------------------------------------------------------------------------------------
def test_compute_optimal_with_logged_flops_per_token_matches_numerical_minimum():
    fm = scaling.FlopsModel(k=40.0, p=0.8)  # F(N) = 40 N^0.8, not 6 N
    c = 1e21
    n_star, d_star = scaling.optimal_allocation(TRUTH, c, fm)
    loss = lambda x: float(scaling.predict_loss(TRUTH, np.exp(x), c / fm.per_token(np.exp(x))))  # noqa: E731
    res = optimize.minimize_scalar(loss, bounds=(np.log(1e6), np.log(1e14)), method="bounded", options=dict(xatol=1e-10))
    assert abs(np.log(n_star) - res.x) < 1e-4
    assert d_star * fm.per_token(n_star) == pytest.approx(c, rel=1e-9)  # D* uses the runs' own FLOPs per token


def test_flops_model_is_fitted_to_the_logs_and_isoflop_uses_it():
    grid = quickstart_grid()
    model, compute = scaling.table_compute(grid, grid.params.to_numpy(float), grid.tokens.to_numpy(float))
    assert model.source == "fitted to the logged flops_per_token" and model.p != 1.0
    np.testing.assert_allclose(compute, grid.flops)
    assert model.max_rel_error == pytest.approx(np.max(np.abs(model.per_token(grid.params) / grid.flops_per_token - 1)))
    published = pd.DataFrame(dict(params=[1e8, 2e8], tokens=[1e9, 1e9]))  # no FLOPs logged: C = 6 N D, said so
    assert scaling.table_compute(published, published.params.to_numpy(), published.tokens.to_numpy())[0] == scaling.FlopsModel()
    iso = isoflop.synthetic_isoflop_table(TRUTH)
    iso["flops_per_token"] = 6.0 * iso.params * 1.3  # a different k than 6: D* must follow it
    fit = isoflop.fit_isoflop(iso, n_bootstrap=0)
    np.testing.assert_allclose(fit.budgets.d_opt * fit.flops.per_token(fit.budgets.n_opt), fit.budgets.compute, rtol=1e-9)
    assert fit.flops.k == pytest.approx(7.8) and fit.flops.p == 1.0


def test_both_parameter_conventions_for_embedding_heavy_models(tmp_path):
    grid = quickstart_grid()
    assert scaling.embedding_heavy(grid)  # the CPU presets are mostly embeddings
    law = dict(E=2.0, A=30.0, B=200.0, alpha=0.3, beta=0.4)
    grid["loss"] = _noisy(law, grid.params, grid.tokens, 3)
    path = tmp_path / "results.csv"
    grid.to_csv(path, index=False)
    out = tmp_path / "fit"
    assert commands.run_fit(_args("scaling", "--results", str(path), "--out", str(out), "--bootstrap", "20", "--starts", "4")) == 0
    non_emb, total = (json.loads((out / f).read_text()) for f in ("fit.json", "fit_total.json"))
    assert non_emb["n_convention"] == "non-embedding parameters N"
    assert total["n_convention"] == "total parameters N (with embeddings)"
    assert non_emb["alpha"] != total["alpha"]
    assert (out / "loss_vs_compute_total.png").stat().st_size > 1000
    only = tmp_path / "only"
    assert commands.run_fit(_args("scaling", "--results", str(path), "--out", str(only), "--bootstrap", "0",
                                  "--starts", "4", "--params", "total")) == 0
    assert json.loads((only / "fit.json").read_text())["n_convention"].startswith("total") and not (only / "fit_total.json").exists()


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.configure_fit(parser)
    return parser.parse_args(list(argv))


def _bad_tables() -> dict[str, tuple[pd.DataFrame, list[str], str]]:
    base = scaling.synthetic_table(TRUTH, 20, seed=4)
    return {
        "equal losses": (base.assign(loss=2.5), [], "every loss is equal"),
        "same N": (base.assign(params=1e8), [], "every run has the same N .*N is not identifiable"),
        "same D": (base.assign(tokens=1e10), [], "every run has the same D"),
        "negative bootstrap": (base, ["--bootstrap", "-1"], "bootstrap replicates must be >= 0"),
        "shared without per-modality": (base, ["--shared-exponents"], "--shared-exponents needs --per-modality"),
        "fixed unknown parameter": (base, ["--fix", "gamma=1"], "unknown parameter"),
    }


@pytest.mark.parametrize("case", list(_bad_tables()))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    frame, extra, message = _bad_tables()[case]
    path = tmp_path / "results.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "new" / "fit"
    assert commands.run_fit(_args("scaling", "--results", str(path), "--out", str(out), "--starts", "2", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mdiff fit: error:")
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no output folder, no staging left behind


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "results.csv"
    scaling.synthetic_table(TRUTH, 20).to_csv(path, index=False)
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert commands.run_fit(_args("scaling", "--results", str(path), "--out", str(target))) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "taken"]


def test_arrays_api_rejects_the_same_cases():
    df = scaling.synthetic_table(TRUTH, 20)
    with pytest.raises(AnalysisError, match="every loss is equal"):
        scaling.fit_arrays(df.params, df.tokens, np.full(20, 3.0), n_bootstrap=0)
    with pytest.raises(AnalysisError, match="same N"):
        scaling.fit_arrays(np.full(20, 1e8), df.tokens, df.loss, n_bootstrap=0)
    with pytest.raises(AnalysisError, match=">= 0"):
        scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=-5)
    with pytest.raises(AnalysisError, match=">= 0"):
        isoflop.fit_isoflop_arrays(df.params, df.tokens, df.loss, n_bootstrap=-1)




# ------------------------------------------------------------------------------------------------
# What the quickstart and the report show
# ------------------------------------------------------------------------------------------------
def test_quickstart_line_never_prints_an_unidentifiable_fit_as_a_finding():
    from mdiff.quickstart import fit_line

    grid = quickstart_grid()
    table = grid.assign(loss_image=_noisy(QUICKSTART_IMAGE_FIT, grid.params, grid.tokens, 0))
    flagged = json.loads(json.dumps(scaling.fit_scaling_law(table, "loss_image", **FAST).to_json()))
    line = fit_line(flagged)
    assert line.startswith("NOT IDENTIFIABLE") and "L =" not in line
    df = scaling.synthetic_table(TRUTH, 40, noise=0.01, seed=2)
    good = scaling.fit_arrays(df.params, df.tokens, df.loss, **FAST).to_json()
    assert fit_line(good).startswith("L = ") and "alpha 0.3" in fit_line(good) and "[" in fit_line(good)


def test_report_greys_out_an_unidentifiable_fit(tmp_path):
    from analysis.report import build_report

    grid = quickstart_grid()
    grid["loss"] = _noisy(QUICKSTART_IMAGE_FIT, grid.params, grid.tokens, 1)
    grid["name"] = [f"r{i}" for i in range(len(grid))]
    (tmp_path / "runs").mkdir()
    grid.to_csv(tmp_path / "results.csv", index=False)
    text = build_report(tmp_path, n_bootstrap=10).read_text()
    assert "class='fit unidentified'" in text and "Not identifiable: these data do not pin the law down" in text
    assert "non-embedding parameters N" in text and "total parameters N (with embeddings)" in text  # both conventions
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "**Not identifiable: not a finding.**" in summary and "| E | not identified |" in summary
    analyses = json.loads((tmp_path / "report" / "analyses.json").read_text())
    assert analyses["scaling_fit"]["identifiable"] is False and "scaling_fit_total" in analyses
