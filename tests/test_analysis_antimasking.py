"""Anti-masking analysis and the report sections of the optimiser studies (transfer, anti-masking, batch),
on synthetic sweep directories whose answers follow from their construction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import antimasking, transfer
from analysis.batch import synthetic_batch_table
from analysis.report import build_report


def _sweep(tmp_path, frame: pd.DataFrame, axes: list[str]):
    d = tmp_path / "sweep"
    (d / "runs").mkdir(parents=True)
    frame = frame.assign(name=[f"r{i}" for i in range(len(frame))])
    (d / "sweep.json").write_text(json.dumps(dict(sweep="test", axes=axes, points=[])))
    frame.to_csv(d / "results.csv", index=False)
    return d


def _anti_table() -> pd.DataFrame:
    rows = []
    for seed, base in enumerate((3.0, 3.1, 2.9)):
        for on in (False, True):  # on is better by 0.05 + 0.01 * seed in every seed
            rows.append({"seed": seed, "diffusion.anti_masking": on, "loss": base - (0.05 + 0.01 * seed) * on,
                         "loss_text": base + 0.5, "status": "complete"})
    return pd.DataFrame(rows)


def test_paired_difference_is_the_per_seed_difference():
    s = antimasking.loss_summary(_anti_table()).set_index("loss_column")
    d = -np.array([0.05, 0.06, 0.07])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert s.loc["loss", "diff_on_minus_off"] == pytest.approx(d.mean())
    assert s.loc["loss", "diff_ci95"][1] == pytest.approx(d.mean() + half)
    assert s.loc["loss", "off_mean"] == pytest.approx(3.0) and s.loc["loss", "n_pairs"] == 3
    assert s.loc["loss_text", "diff_on_minus_off"] == pytest.approx(0.0)


def _variance_file(d):
    est = lambda n, dr, cr, v: dict(distinct_rows=dr, computed_rows=cr, variance=v, ratio_to_plain=v / 2.0,  # noqa: E731
                                    ratio_ci95=None if n == "plain" else [v / 2.4, v / 1.6])
    regime = dict(estimators=dict(plain=est("plain", 8, 8, 2.0), anti=est("anti", 8, 16, 0.8), plain_2x=est("plain_2x", 16, 16, 1.0)),
                  variance_ci95_plain=[1.6, 2.4], bias_check=dict(mean_difference_sq=0.1, noise_level=0.1, ratio=1.0))
    (d / "gradient_variance.json").write_text(json.dumps(dict(run="r0", step=100, draws=48, rows=8, regimes={"data+mask": regime, "mask": regime})))


def test_report_has_an_antimasking_section_with_the_variance(tmp_path):
    d = _sweep(tmp_path, _anti_table(), ["seed", "diffusion.anti_masking"])
    text = build_report(d, n_bootstrap=10).read_text()
    assert ">Anti-masking</h2>" in text and "no gradient_variance.json" in text
    _variance_file(d)
    text = build_report(d, n_bootstrap=10).read_text()
    assert "Gradient variance by estimator" in text and (d / "report" / "figures" / "antimasking.png").stat().st_size > 1000
    out = json.loads((d / "report" / "analyses.json").read_text())["antimasking"]
    assert out["gradient_variance"]["regimes"]["mask"]["estimators"]["anti"]["variance"] == 0.8


def test_report_has_a_transfer_section(tmp_path):
    df = transfer.synthetic_transfer_table(lrs=tuple(0.75e-3 * 2.0**k for k in range(7)))
    d = _sweep(tmp_path, df, ["model.width", "optim.completep", "optim.lr", "seed"])
    text = build_report(d, n_bootstrap=10).read_text()
    assert ">Hyperparameter transfer</h2>" in text and (d / "report" / "figures" / "transfer_curves.png").exists()
    summary = json.loads((d / "report" / "analyses.json").read_text())["transfer"]["summary"]
    shift = {r["param"]: r["shift_steps"] for r in summary}
    assert shift[transfer.COMPLETEP] == pytest.approx(0.0, abs=1e-9) and shift[transfer.SP] == pytest.approx(3.0)


def test_report_batch_section_measures_b_crit_and_gamma(tmp_path):
    df = synthetic_batch_table(horizons=(1e6, 4e6), batches=(4, 8, 16, 32, 64, 128, 256, 512), noise=0.005)
    df["optim.gamma"], df["steps_critical"] = 0.44, 100
    d = _sweep(tmp_path, df, ["train.batch", "train.tokens", "optim.reparameterise", "seed"])
    text = build_report(d, n_bootstrap=50).read_text()
    assert ">Batch size</h2>" in text and "Configured starting values vs measured" in text
    out = json.loads((d / "report" / "analyses.json").read_text())["batch"]
    assert [c["b_crit_bracket"] for c in out["critical"]] == [[64.0, 128.0], [256.0, 512.0]]
    assert out["gamma"]["source"] == "naive" and out["gamma"]["gamma"] == pytest.approx(0.44, abs=0.05)


def test_gradient_variance_summary_from_known_draws():
    """Draws with per-coordinate variance s^2 over P coordinates: tr Cov = P s^2; equal means pass the bias check."""
    from analysis import gradient_variance

    rng = np.random.default_rng(0)
    k, p = 400, 50
    g = {"plain": rng.normal(1.0, 2.0, (k, p)), "anti": rng.normal(1.0, 1.0, (k, p)), "plain_2x": rng.normal(1.0, 2.0 / np.sqrt(2), (k, p))}
    s = gradient_variance._summarise(g, 8, rng, n_bootstrap=200)
    est = s["estimators"]
    assert est["plain"]["variance"] == pytest.approx(p * 4.0, rel=0.1)
    assert est["anti"]["ratio_to_plain"] == pytest.approx(0.25, rel=0.15)
    lo, hi = est["plain_2x"]["ratio_ci95"]
    assert lo <= 0.5 <= hi
    assert (est["anti"]["distinct_rows"], est["anti"]["computed_rows"]) == (8, 16)
    assert s["bias_check"]["ratio"] < 3.0  # same mean: the difference is of the noise's size
    g["anti"] = g["anti"] + 1.0  # a biased estimator stands out
    assert gradient_variance._summarise(g, 8, rng, n_bootstrap=10)["bias_check"]["ratio"] > 20


def test_gradient_variance_picks_a_run_without_anti_masking(tmp_path):
    from analysis import gradient_variance
    from analysis.errors import AnalysisError

    d = _sweep(tmp_path, _anti_table(), ["seed", "diffusion.anti_masking"])
    assert gradient_variance.pick_run(d, None).name == "r0"  # r0: seed 0, off
    with pytest.raises(AnalysisError, match="no complete run named"):
        gradient_variance.pick_run(d, "nope")
    assert gradient_variance.main([str(d), "--run", "nope"]) == 2 and not (d / "gradient_variance.json").exists()
