"""`mdiff report DIR`: a self-contained page from a sweep directory, analyses picked from the columns, extra sections."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pandas as pd

from analysis import commands, scaling
from analysis.report import Section, audio_tag, build_report, image_tag

TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _sweep(tmp_path, frame: pd.DataFrame, axes: list[str]):
    d = tmp_path / "sweep"
    (d / "runs").mkdir(parents=True)
    for name in frame["name"]:
        (d / "runs" / name).mkdir()
    (d / "sweep.json").write_text(json.dumps(dict(name="test", axes=axes, points=[])))
    frame.to_csv(d / "results.csv", index=False)
    return d


def _scaling_and_mixing_table() -> pd.DataFrame:
    df = scaling.synthetic_table(TRUTH, 30, noise=0.01, seed=3)
    rng = np.random.default_rng(0)
    df["loss_text"] = df.loss * 1.05
    df["loss_image"] = df.loss * 0.9
    df["data.mix.text"] = rng.choice([0.2, 0.5, 0.8], len(df))
    df["data.mix.image"] = 1 - df["data.mix.text"]
    df["diffusion.schedule.text"] = rng.choice(["linear", "cosine"], len(df))
    df["name"] = [f"r{i}" for i in range(len(df))]
    df["status"] = "complete"
    df.loc[4, ["status", "loss", "loss_text", "loss_image"]] = ["failed", np.nan, np.nan, np.nan]
    return df


def test_report_picks_analyses_from_columns_and_links_images(tmp_path):
    d = _sweep(tmp_path, _scaling_and_mixing_table(), ["model.width", "data.mix.text", "data.mix.image"])
    extra = Section("Samples", body_html=image_tag("samples/cat.png", "a cat") + audio_tag("samples/hello.wav", "hello"))
    page = build_report(d, extra_sections=[extra], n_bootstrap=20)
    assert page == d / "report" / "index.html"
    text = page.read_text()
    for title in ("Overview", "Scaling law", "Per-modality scaling", "Modality mixing", "Noise schedules", "Samples"):
        assert f">{title}</h2>" in text, title
    assert "Batch size" not in text and "IsoFLOP analysis</h2>" not in text  # no batch column; no budgets
    assert "<audio controls" in text and "excluded 1 run(s)" in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert images and all(not src.startswith("/") for src in images)
    for src in images:
        if not src.startswith("samples/"):
            assert (page.parent / src).stat().st_size > 1000 and (page.parent / src).with_suffix(".pdf").exists()
    summary = (d / "report" / "summary.md").read_text()
    assert "## Scaling law" in summary and "| parameter |" in summary
    assert "scaling_fit" in json.loads((d / "report" / "analyses.json").read_text())


def test_report_batch_sweep(tmp_path):
    from analysis.batch import synthetic_batch_table

    frame = synthetic_batch_table()
    frame["name"] = [f"b{i}" for i in range(len(frame))]
    d = _sweep(tmp_path, frame, ["train.batch", "train.tokens", "optim.reparameterise"])
    text = build_report(d, n_bootstrap=10).read_text()
    assert ">Batch size</h2>" in text and "Scaling law</h2>" not in text


def test_report_on_a_directory_without_results_is_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    commands.configure_report(parser)
    assert commands.run_report(parser.parse_args([str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.csv" in err
