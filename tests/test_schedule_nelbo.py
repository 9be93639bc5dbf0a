"""`mdiff nelbo` (a fixed model's NELBO under several schedules) and the studies' readers of it.

The invariance itself follows from the bound: with the denoiser blind to t, the substitution
u = 1 - alpha(t) removes the schedule from the integral, so every schedule's estimate of one model's
NELBO must agree within its Monte Carlo error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mdiff import cli, rundir
from mdiff.config import load_config
from mdiff.eval.nelbo import NELBO_FILE, Estimate, split_schedules


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """config.json + a step-0 checkpoint on the synthetic dataset, written the way training writes them."""
    from flax import nnx

    from mdiff.data.corpus import SYNTHETIC_VOCAB
    from mdiff.train import loop
    from mdiff.train.checkpoint import Checkpointer

    workdir = tmp_path_factory.mktemp("run")
    config = load_config("experiments/quickstart.py:test", ["--config.train.eval_batch=8"])
    run = loop.setup(config, workdir, SYNTHETIC_VOCAB)
    checkpointer = Checkpointer(workdir / rundir.CHECKPOINT_DIR, use_async=False)
    checkpointer.save(0, loop.init_state(run), {"param_shapes": loop.param_shapes(nnx.to_pure_dict(run.abstract_params))})
    checkpointer.close()
    rundir.write_config(workdir, config)
    return workdir


def test_estimate_is_the_mean_and_its_standard_error():
    values = [1.0, 2.0, 4.0, 5.0]  # mean 3, sample variance (4 + 1 + 1 + 4) / 3
    est = Estimate.of(values)
    assert est.mean == 3.0 and est.se == pytest.approx(math.sqrt(10 / 3 / 4)) and est.repeats == 4


def test_schedule_names_split_outside_parentheses():
    assert split_schedules("linear,geometric(0.01,20); polynomial(2)") == ["linear", "geometric(0.01,20)", "polynomial(2)"]


@pytest.mark.slow
def test_every_schedule_estimates_the_same_nelbo(run_dir, tmp_path):
    out = tmp_path / "nelbo.json"
    argv = ["nelbo", "--workdir", str(run_dir), "--schedules", "linear,cosine,polynomial(2)", "--repeats", "12", "--batches", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["reference"] == "linear" and result["repeats"] == 12 and result["step"] == 0
    rows = pd.DataFrame(result["results"])
    assert set(rows.schedule) == {"linear", "cosine", "polynomial(2)"} and {"all", "text", "image"} <= set(rows.modality)
    ref = rows[rows.schedule == "linear"]
    assert (ref.diff_vs_reference == 0).all() and (ref.diff_se == 0).all()
    others = rows[rows.schedule != "linear"]
    assert (others.se > 0).all() and (others.diff_se > 0).all()
    # An untrained model's NLL is about log V for every token, so the bound is about log V for every schedule...
    assert rows[rows.modality == "all"]["mean"].between(0.8 * math.log(64), 1.3 * math.log(256)).all()
    # ...and the schedules agree within their error (4 SE: a false alarm about once in 16,000 comparisons).
    assert (others.diff_vs_reference.abs() <= 4 * others.diff_se).all(), others


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    run_dir = tmp_path / "run"  # every check comes before the run is read
    assert cli.main(["nelbo", "--workdir", str(run_dir), "--repeats", "1", "--out", str(tmp_path / "x.json")]) == 2
    assert cli.main(["nelbo", "--workdir", str(run_dir), "--workdir", str(run_dir), "--out", str(tmp_path / "x.json")]) == 2
    assert cli.main(["nelbo", "--workdir", str(run_dir), "--schedules", "linear,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
    assert "repeats" in capsys.readouterr().err


def _write_nelbo(sweep, name, reference, rows, mix=None):
    path = sweep / "runs" / name / NELBO_FILE
    path.parent.mkdir(parents=True)
    results = [dict(schedule=s, modality=m, mean=mu, se=se, diff_vs_reference=d, diff_se=dse) for s, m, mu, se, d, dse in rows]
    path.write_text(json.dumps(dict(step=10, repeats=8, reference=reference, results=results, mix=mix)))


def test_invariance_table_flags_a_difference_outside_its_interval(tmp_path):
    from analysis.schedules import invariance_table, invariance_verdict

    _write_nelbo(tmp_path, "a", "linear", [("linear", "text", 5.0, 0.01, 0.0, 0.0),
                                          ("cosine", "text", 5.01, 0.01, 0.01, 0.01),   # z = 1: consistent
                                          ("geometric", "text", 4.95, 0.01, -0.05, 0.01)])  # z = -5: not
    inv = invariance_table(tmp_path)
    got = inv.set_index("schedule")
    assert got.loc["cosine", "z"] == pytest.approx(1.0) and bool(got.loc["cosine", "consistent"])
    assert got.loc["geometric", "z"] == pytest.approx(-5.0) and not bool(got.loc["geometric", "consistent"])
    assert invariance_verdict(inv).startswith("1 of 2 paired differences")


def test_common_estimate_averages_seeds_per_trained_schedule(tmp_path):
    from analysis.schedules import common_estimate

    values = {"cos-0": 5.0, "cos-1": 5.2, "lin-0": 4.9, "lin-1": 5.1}
    for name, v in values.items():
        _write_nelbo(tmp_path, name, "linear", [("linear", "text", v, 0.02, 0.0, 0.0)])
    df = pd.DataFrame({"name": list(values), "diffusion.schedule.text": ["cosine", "cosine", "linear", "linear"],
                       "status": "complete"})
    got = common_estimate(tmp_path, df).set_index("trained")
    half = stats.t.ppf(0.975, 1) * np.std([5.0, 5.2], ddof=1) / math.sqrt(2)
    assert got.loc["cosine", "mean"] == pytest.approx(5.1) and got.loc["cosine", "ci_hi"] == pytest.approx(5.1 + half)
    assert got.loc["linear", "mean"] == pytest.approx(5.0) and got.loc["linear", "n_seeds"] == 2
    assert got.loc["linear", "mc_se"] == pytest.approx(0.02 / math.sqrt(2))


def test_tradeoff_puts_each_loss_against_its_own_share(tmp_path):
    from analysis.mixing import common_token_losses, tradeoff

    df = pd.DataFrame({"name": ["a0", "a1", "b0"], "data.mix.text": [0.2, 0.2, 0.6], "data.mix.image": [0.8, 0.8, 0.4],
                       "loss_text": [6.0, 6.4, 5.0], "loss_image": [4.0, 4.0, 4.5], "status": "complete"})
    curves = tradeoff(df)
    text = curves[curves.modality == "text"].set_index("own_fraction")
    assert text.loc[0.2, "mean"] == pytest.approx(6.2) and text.loc[0.2, "n_seeds"] == 2 and text.loc[0.6, "mean"] == 5.0
    half = stats.t.ppf(0.975, 1) * np.std([6.0, 6.4], ddof=1) / math.sqrt(2)
    assert text.loc[0.2, "ci_lo"] == pytest.approx(6.2 - half)
    image = curves[curves.modality == "image"].set_index("own_fraction")
    assert image.loc[0.8, "mean"] == 4.0 and image.loc[0.4, "mean"] == 4.5

    _write_nelbo(tmp_path, "a0", "linear", [("linear", "text", 7.0, 0.1, 0.0, 0.0)], mix={"text": 0.5, "image": 0.5})
    common = common_token_losses(tmp_path, df)
    assert list(common["name"]) == ["a0"] and common.loc[0, "loss_text"] == 7.0 and common.loc[0, "loss_image"] == 4.0


def test_report_sections_come_from_the_sweep_directory(tmp_path):
    from analysis.report import build_report

    sweep = tmp_path / "schedules"
    names = {"lin-0": ("linear", 5.0), "lin-1": ("linear", 5.2), "cos-0": ("cosine", 5.1), "cos-1": ("cosine", 5.3)}
    rows = [dict(name=n, **{f"diffusion.schedule.{m}": s for m in ("text", "image")}, seed=int(n[-1]), loss=v,
                 loss_text=v, loss_image=v - 1, status="complete") for n, (s, v) in names.items()]
    sweep.mkdir()
    pd.DataFrame(rows).to_csv(sweep / "results.csv", index=False)
    for n, (_, v) in names.items():
        _write_nelbo(sweep, n, "linear", [("linear", "text", v, 0.01, 0.0, 0.0), ("cosine", "text", v + 0.005, 0.01, 0.005, 0.01)])
        (sweep / "runs" / n / "eval_samples.json").write_text(json.dumps(
            {"tasks": {"text": {"gen_ppl": 1000.0 + 10 * v, "shuffled": {"gen_ppl": 3000.0}}}}))
    build_report(sweep, n_bootstrap=0)
    summary = (sweep / "report" / "summary.md").read_text()
    for heading in ("## Noise schedules", "## Schedule invariance at a fixed model", "Sample quality by trained schedule",
                    "NELBO of each trained model under one estimator"):
        assert heading in summary
    assert "4 of 4 paired differences" in summary
    assert (sweep / "report" / "figures" / "schedule_invariance.png").is_file()
    assert (sweep / "report" / "figures" / "schedules_sample_quality.png").is_file()

    mixing = tmp_path / "mixing"
    mixes = [(0.2, 0.4, 0.4), (0.4, 0.2, 0.4), (0.4, 0.4, 0.2), (0.6, 0.2, 0.2)]
    rows = [dict(name=f"m{i}", **{"data.mix.text": t, "data.mix.image": im, "data.mix.audio": a}, loss=6.0,
                 loss_text=7 - t, loss_image=6 - im, loss_audio=5 - a, status="complete") for i, (t, im, a) in enumerate(mixes)]
    mixing.mkdir()
    pd.DataFrame(rows).to_csv(mixing / "results.csv", index=False)
    build_report(mixing, n_bootstrap=0)
    summary = (mixing / "report" / "summary.md").read_text()
    assert "Trade-off: loss per modality against its share" in summary
    assert (mixing / "report" / "figures" / "mixing_tradeoff.png").is_file()


def test_an_older_run_config_gets_the_keys_added_since(tmp_path):
    """A run trained before a config key existed is still readable: the key takes today's default."""
    from mdiff.defaults import base_config
    from mdiff.eval.restore import read_run_config

    saved = base_config().to_dict()
    del saved["optim"]["seq_len_base"]
    saved["optim"]["lr"] = 0.123
    (tmp_path / rundir.CONFIG_FILE).write_text(json.dumps(saved, default=str))
    config = read_run_config(tmp_path)
    assert config.optim.seq_len_base == base_config().optim.seq_len_base and config.optim.lr == 0.123
