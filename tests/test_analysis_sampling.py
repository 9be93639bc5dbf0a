"""The sampling-defaults study on a table shaped like the sampling sweep's results.csv."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis import sampling
from analysis.report import build_report


def sampling_results() -> pd.DataFrame:
    """A chained sweep: text rows vary steps x method, t2i rows vary guidance; one failed run."""
    rows = []
    for steps in (16, 32, 64):
        for method in ("ancestral", "confidence"):
            ppl = 400.0 / np.sqrt(steps) + (5.0 if method == "confidence" else 0.0)
            rows.append({"name": f"text-{steps}-{method}", "sampling.text.steps": steps, "sampling.text.method": method,
                         "eval/text/gen_ppl": ppl, "eval/t2i/accuracy": 0.3, "status": "complete"})
    for guidance in (0.0, 1.0, 3.0):
        rows.append({"name": f"t2i-{guidance}", "sampling.t2i.guidance": guidance, "eval/text/gen_ppl": 99.0,
                     "eval/t2i/accuracy": 0.2 + 0.1 * guidance - 0.03 * guidance**2, "status": "complete"})
    rows.append({"name": "t2i-broken", "sampling.t2i.guidance": 9.0, "eval/t2i/accuracy": 1.0, "status": "failed"})
    return pd.DataFrame(rows)


def test_chosen_defaults_follow_each_tasks_goal():
    chosen = sampling.chosen_defaults(sampling_results()).set_index("task")
    assert chosen.loc["text", "settings"] == {"steps": 64, "method": "ancestral"}  # lowest perplexity
    assert chosen.loc["text", "best"] == 400.0 / 8
    assert chosen.loc["t2i", "settings"] == {"guidance": 1.0}  # highest accuracy; the failed run is ignored
    assert chosen.loc["t2i", "n_points"] == 3
    assert sampling.default_overrides(chosen.reset_index()) == {
        "sampling.text.steps": 64, "sampling.text.method": "ancestral", "sampling.t2i.guidance": 1.0}


def test_quality_vs_steps_groups_by_the_other_varied_key():
    curves = sampling.quality_vs_steps(sampling_results())
    assert set(curves.group) == {"ancestral", "confidence"}
    ancestral = curves[curves.group == "ancestral"].sort_values("steps")
    assert list(ancestral.steps) == [16.0, 32.0, 64.0]
    assert np.allclose(ancestral["mean"], 400.0 / np.sqrt([16, 32, 64]))


def test_report_writes_the_sampling_section_and_defaults(tmp_path):
    sampling_results().to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "sweep.json").write_text(json.dumps({"sweep": "sampling:cpu", "config": "x.py:y", "axes": [], "points": []}))
    page = build_report(tmp_path, n_bootstrap=0)
    html = page.read_text()
    assert "mdiff report: sampling:cpu" in html
    assert "Sampling defaults" in html and "sampling_quality.png" in html
    assert (tmp_path / "report" / "figures" / "sampling_quality.png").stat().st_size > 0
    defaults = json.loads((tmp_path / "report" / "sampling_defaults.json").read_text())
    assert defaults["sampling.t2i.guidance"] == 1.0 and defaults["sampling.text.steps"] == 64


def test_sample_reads_the_chosen_defaults_file(tmp_path):
    """The report's sampling_defaults.json feeds `mdiff sample --defaults`; flags still win; bad keys are refused."""
    import argparse

    import pytest

    from mdiff.diffusion.sampling import SamplingError
    from mdiff.eval import commands

    path = tmp_path / "sampling_defaults.json"
    path.write_text(json.dumps({"sampling.t2i.guidance": 1.0, "sampling.t2i.steps": 32, "sampling.text.steps": 64}))
    assert commands.file_defaults(str(path), "t2i") == {"guidance": 1.0, "steps": 32}
    assert commands.file_defaults(None, "t2i") == {}
    parser = argparse.ArgumentParser()
    commands.configure_sample(parser)
    args = parser.parse_args(["--workdir", "w", "--task", "t2i", "--out", "o", "--defaults", str(path), "--steps", "8"])
    section = {"steps": 64, "grid": "linear", "method": "ancestral", "temperature": 1.0, "top_k": 0, "top_p": 1.0,
               "guidance": 0.0, "ordering": "max_prob", "remask": 0.0}
    settings = commands._settings(type("C", (), {"sampling": {"t2i": section}})(), "t2i", args)
    assert settings.guidance == 1.0 and settings.steps == 8
    path.write_text(json.dumps({"sampling.t2i.guidanse": 1.0}))
    with pytest.raises(SamplingError, match="guidanse"):
        commands.file_defaults(str(path), "t2i")


def test_degenerate_text_is_not_chosen_and_embedded_tasks_use_wer():
    """Low-entropy text wins on n-gram perplexity but fails the entropy guard; i2t/s2t on the embedded
    dataset are judged by WER (token accuracy only exists on the synthetic dataset); ties go to fewer steps."""
    rows = [
        {"name": "greedy", "sampling.text.method": "confidence", "eval/text/gen_ppl": 40.0,
         "eval/text/entropy_bits": 6.0, "eval/text/ceiling/entropy_bits": 9.0, "status": "complete"},
        {"name": "ancestral", "sampling.text.method": "ancestral", "eval/text/gen_ppl": 900.0,
         "eval/text/entropy_bits": 8.9, "eval/text/ceiling/entropy_bits": 9.0, "status": "complete"},
    ]
    rows += [{"name": f"i2t-{s}", "sampling.i2t.steps": s, "eval/i2t/wer": w, "status": "complete"}
             for s, w in ((24, 0.5), (6, 0.5), (2, 0.8))]
    chosen = sampling.chosen_defaults(pd.DataFrame(rows)).set_index("task")
    assert chosen.loc["text", "settings"] == {"method": "ancestral"} and chosen.loc["text", "qualified"] == 1
    assert chosen.loc["i2t", "score"] == "wer" and chosen.loc["i2t", "settings"] == {"steps": 6}
    only_degenerate = pd.DataFrame(rows[:1])
    assert sampling.chosen_defaults(only_degenerate).loc[0, "qualified"] == 0  # the guard's failure shows


def test_sweep_point_summary_keeps_the_reference_scores():
    from mdiff.sweeps.sample_point import flat_scores

    scores = {"gen_ppl": 900.0, "entropy_bits": 8.9, "ceiling": {"gen_ppl": 100.0, "entropy_bits": 9.0},
              "shuffled": {"gen_ppl": 3000.0}, "examples": ["x"], "seconds": 3.0, "settings": {"steps": 8}}
    assert flat_scores("eval/text", scores) == {
        "eval/text/gen_ppl": 900.0, "eval/text/entropy_bits": 8.9, "eval/text/ceiling/gen_ppl": 100.0,
        "eval/text/ceiling/entropy_bits": 9.0, "eval/text/shuffled/gen_ppl": 3000.0}


def test_quickstart_config_carries_the_sweep_chosen_defaults(tmp_path):
    """experiments/quickstart.py's sampling sections equal the committed sweep choice, so `mdiff sample` /
    `mdiff eval` start from them; a --defaults file and explicit flags still win over the config."""
    import argparse
    import pathlib

    from mdiff.config import load_config
    from mdiff.eval import commands

    root = pathlib.Path(__file__).resolve().parent.parent
    chosen_file = root / "experiments" / "quickstart_sampling.json"
    chosen = json.loads(chosen_file.read_text())
    assert chosen and all(key.startswith("sampling.") for key in chosen)
    config = load_config("experiments/quickstart.py:cpu-l")
    for key, value in chosen.items():
        _, task, name = key.split(".")
        assert config.sampling[task][name] == value, key
    assert load_config("experiments/quickstart.py:cpu-xs").sampling.to_dict() == config.sampling.to_dict()

    parser = argparse.ArgumentParser()
    commands.configure_sample(parser)
    task = sorted(chosen)[0].split(".")[1]
    base = ["--workdir", "w", "--task", task, "--out", "o"]
    settings = commands._settings(config, task, parser.parse_args(base))
    assert all(getattr(settings, k.split(".")[2]) == v for k, v in chosen.items() if k.split(".")[1] == task)
    assert commands._settings(config, task, parser.parse_args([*base, "--steps", "3"])).steps == 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps({f"sampling.{task}.steps": 5}))
    assert commands._settings(config, task, parser.parse_args([*base, "--defaults", str(other)])).steps == 5
