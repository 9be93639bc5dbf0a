"""`mdiff quickstart`: stage helpers, and the whole pipeline end to end on the synthetic dataset."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re

import pytest

from mdiff import quickstart as qs
from mdiff.sweeps import state


def write_results(out: pathlib.Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = ["name", "model.size", *state.METRIC_COLUMNS, "status"]
    with open(out / state.RESULTS_FILE, "w") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})


def test_best_run_is_the_lowest_complete_loss(tmp_path):
    write_results(tmp_path, [
        dict(name="a", loss=3.0, status="complete"),
        dict(name="b", loss=2.5, status="complete"),
        dict(name="c", loss=1.0, status="failed"),
        dict(name="d", loss="", status="pending"),
    ])  # fmt: skip
    assert qs.best_run(tmp_path) == "b"
    write_results(tmp_path, [dict(name="c", loss=1.0, status="failed")])
    assert qs.best_run(tmp_path) is None


def test_headline_scores_keep_top_level_numbers():
    scores = {"wer": 0.5, "cer": 0.25, "ceiling": {"wer_real": 0.1}, "examples": [], "seconds": 3.0, "asr": "x"}
    assert qs.headline_scores(scores) == {"wer": 0.5, "cer": 0.25}


def test_samples_html_links_media_relative_to_the_report(tmp_path):
    samples_dir = tmp_path / "samples"
    samples_dir.mkdir()
    (samples_dir / "text_00.txt").write_text("in the <beginning>\n")
    samples = {"run": "r", "step": 7, "tasks": {
        "text": {"samples": [{"prompt": None, "file": "text_00.txt"}], "scores": {"gen_ppl": 12.5}},
        "t2i": {"samples": [{"prompt": "a red heart", "file": "t2i_00.png"}], "scores": {}},
        "t2s": {"samples": [{"prompt": "hello", "file": "t2s_00.wav"}], "scores": {"wer": 0.5}},
    }}  # fmt: skip
    html = qs.samples_html(tmp_path, samples, tmp_path / "report")
    assert "in the &lt;beginning&gt;</pre>" in html
    assert "src='../samples/t2i_00.png'" in html and "a red heart" in html
    assert "<audio controls preload='none' src='../samples/t2s_00.wav'>" in html
    assert "<td>gen_ppl</td><td>12.5</td>" in html


def test_stages_show_progress():
    stream = io.StringIO()
    stages = qs.Stages(4, stream)
    stages.begin("data", "data")
    stages.say("building")
    stages.begin("sweep", "training sweep scaling:cpu (2 at a time)")
    stages.end()
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["quickstart 0m00s | [1/4] data", "quickstart 0m00s | building"]
    assert set(stages.seconds) == {"data", "sweep"} and all(v >= 0 for v in stages.seconds.values())


def test_bad_output_directory_is_a_clear_error(tmp_path, capsys):
    from mdiff.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["quickstart", "--sweep", "scaling:test", "--out", str(blocker / "sub"), "--no-samples"])
    assert code == 2 and "is not writable" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_end_to_end_and_resume(tmp_path):
    """The real pipeline on the synthetic dataset (2 tiny runs): sweep, fits, samples, report; a rerun
    trains nothing again and reuses the samples."""
    out = tmp_path / "qs"
    stream = io.StringIO()
    result = qs.quickstart(out, sweep="scaling:test", parallel=2, stream=stream, n_bootstrap=0)
    log = stream.getvalue()
    for stage in ("[1/4] data", "[2/4] training sweep scaling:test", "[3/4] samples", "[4/4] report"):
        assert stage in log, log
    rows = list(csv.DictReader(open(out / state.RESULTS_FILE)))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"complete"}
    assert all(float(r["loss"]) > 0 and float(r["params"]) > 0 for r in rows)
    assert result.best_run in {r["name"] for r in rows}
    assert result.fits == {}  # one horizon, two sizes: nothing to fit (the report says so), not an error
    manifest = json.loads((out / "samples" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["run"] == result.best_run
    text = manifest["tasks"]["text"]
    assert len(text["samples"]) == qs.SHOW_PER_TASK and (out / "samples" / text["samples"][0]["file"]).exists()
    assert text["scores"]  # the text evaluator's perplexity and entropy
    page = (out / "report" / "index.html").read_text()
    assert result.report == out / "report" / "index.html"
    assert "Samples" in page and "src='../samples/text_00.txt'" not in page and "<pre" in page
    summary = (out / "report" / "summary.md").read_text()
    assert "## Quickstart" in summary and f"best run (lowest validation loss): {result.best_run}" in summary
    assert "## Samples" in summary and "**Text (unconditional)**" in summary
    timings = json.loads((out / "quickstart.json").read_text())
    assert timings["runs_trained_now"] == 2 and set(timings["stages_s"]) == {"data", "sweep", "samples", "report"}

    def starts() -> dict[str, int]:  # the runner writes "# <date> <command>" before each start
        return {r["name"]: len(re.findall(r"^# \d{4}-", (out / "logs" / f"{r['name']}.log").read_text(), re.M)) for r in rows}

    assert starts() == {r["name"]: 1 for r in rows}
    again = io.StringIO()
    qs.quickstart(out, sweep="scaling:test", parallel=2, stream=again, n_bootstrap=0)
    assert "already made; reusing them" in again.getvalue()
    assert starts() == {r["name"]: 1 for r in rows}



@pytest.mark.slow
def test_sampling_sweep_point_scores_a_trained_run(tmp_path):
    """Train one tiny run, then score it as a sampling-sweep point would: other settings, nothing retrained."""
    import subprocess
    import sys

    from mdiff.sweeps import sample_point

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "mdiff", "train", "--config", "experiments/quickstart.py:test", "--workdir", str(run)],
                   check=True, capture_output=True, cwd=pathlib.Path(__file__).resolve().parent.parent)  # fmt: skip
    point = tmp_path / "sampling_point"
    code = sample_point.main(["--run", str(run), "--config", "experiments/quickstart.py:test",
                              "--workdir", str(point), "--config.sampling.text.steps=8"])  # fmt: skip
    summary = json.loads((point / "summary.json").read_text())
    assert code == 0 and summary["status"] == "complete" and summary["eval/text/gen_ppl"] > 0
    assert json.loads((point / "config.json").read_text())["sampling"]["text"]["steps"] == 8


def test_sampling_point_rejects_non_sampling_keys(tmp_path, capsys):
    from mdiff.sweeps import sample_point

    code = sample_point.main(["--run", "r", "--config", "c.py", "--workdir", str(tmp_path), "--config.train.batch=4"])
    assert code == 2 and "may only change sampling.* keys, not train.batch" in capsys.readouterr().err
    assert sample_point.tasks_touched(["sampling.t2i.guidance"], ["text", "t2i", "t2s"]) == ["t2i"]
    assert sample_point.tasks_touched(["sampling.seed"], ["text", "t2i"]) == ["text", "t2i"]


@pytest.mark.slow
def test_full_quickstart_cpu(tmp_path):
    """The README's quickstart (embedded dataset, 12 runs); minutes on 2 cores."""
    result = qs.quickstart(tmp_path / "qs", stream=None)
    assert not result.failed_runs and {"loss", "loss_text", "loss_image", "loss_audio"} <= set(result.fits)
    assert "error" not in result.samples and set(result.samples["tasks"]) == {"text", "t2i", "t2s"}
    assert (tmp_path / "qs" / "report" / "index.html").exists()
