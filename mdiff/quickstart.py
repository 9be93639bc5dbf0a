"""`mdiff quickstart`: the whole suite, small, on a laptop-class CPU; interrupted and rerun, it continues.

Stages (each prints a header with the elapsed time; each skips work that is already done):
  1. data     build the embedded tri-modal dataset if it is missing (`mdiff.data.build`)
  2. sweep    the CPU scaling sweep (sweeps/scaling.py:cpu, an IsoFLOP grid of 4 sizes x 3 budgets)
              in DIR, N runs at a time, with an overall progress line
  3. fits     scaling laws L(N, D) for the total loss and each modality's loss -> DIR/fits/<column>.json
  4. samples  text, text-to-image and text-to-speech from the best run, scored -> DIR/samples/
  5. report   DIR/report/index.html (plots, tables, samples, audio players) and DIR/report/summary.md

DIR is a sweep directory (sweep.json, runs/, results.csv), so `mdiff report DIR` and `mdiff sweep status DIR`
work on it too. JAX is imported only inside the stages that need it (in subprocesses for training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any, TextIO

from mdiff.sweeps_lib import state
from mdiff.sweeps_lib.define import SweepError

DEFAULT_OUT = "quickstart_out"
DEFAULT_SWEEP = "scaling:cpu"
LOSS_COLUMNS = ("loss", "loss_text", "loss_image", "loss_audio")
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


class Stages:
    """Numbered stage headers and notes with the elapsed time, so a long quickstart shows where it is."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr):
        self.total, self.stream, self.start, self.n = total, stream, time.monotonic(), 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def begin(self, title: str) -> None:
        self.n += 1
        self.say(f"[{self.n}/{self.total}] {title}")

    def say(self, text: str) -> None:
        if self.stream is not None:
            m, s = divmod(int(self.elapsed()), 60)
            self.stream.write(f"quickstart {m}m{s:02d}s | {text}\n")
            self.stream.flush()


@dataclasses.dataclass
class Result:
    out: pathlib.Path
    report: pathlib.Path | None = None
    summary: pathlib.Path | None = None
    best_run: str | None = None
    fits: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed_runs: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------------------------
def sweep_data_config(sweep_spec: str) -> Any:
    """The `config.data` the sweep's runs train on (its dataset and the build settings)."""
    from mdiff.config import load_config
    from mdiff.sweeps_lib.expand import load_sweep

    sw = load_sweep(sweep_spec)
    return load_config(sw.config, [f"--config.{k}={v}" for k, v in sw.common.items()], check=False).data


def ensure_dataset(data_dir: str | None, data_config: Any, stages: Stages) -> str:
    """Build the embedded dataset into `data_dir` unless an intact build with these settings is there."""
    from mdiff.data.build import build_dataset, read_manifest
    from mdiff.data.pipeline import default_data_dir

    path = os.path.abspath(default_data_dir(data_dir or data_config.data_dir))
    found = read_manifest(path) is not None
    stages.say(f"checking the dataset in {path}" if found else f"building the embedded dataset in {path} (once)")
    build_dataset(path, scale=data_config.scale, settings=data_config)  # reuses an intact build
    return path


# ---------------------------------------------------------------------------------------------
# 3. fits
# ---------------------------------------------------------------------------------------------
def fit_losses(out: pathlib.Path, stages: Stages, *, n_bootstrap: int = 20, seed: int = 0) -> dict[str, Any]:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta for each loss column with values; write DIR/fits/<column>.json.

    Returns {column: fit json or {"error": reason}}; a column that cannot be fitted (too few complete
    runs, a modality absent from the data) is reported, not fatal.
    """
    import pandas as pd

    from analysis.errors import AnalysisError
    from analysis.scaling import fit_scaling_law

    table = pd.read_csv(out / state.RESULTS_FILE)
    table.attrs["source"] = str(out / state.RESULTS_FILE)
    fits_dir = out / "fits"
    fits_dir.mkdir(exist_ok=True)
    fits: dict[str, Any] = {}
    for column in LOSS_COLUMNS:
        if column not in table or table[column].isna().all():
            continue
        t0 = time.monotonic()
        try:
            fit = fit_scaling_law(table, column, n_bootstrap=n_bootstrap, n_starts=8, seed=seed, workers=1, use_flops=True)
        except AnalysisError as e:
            fits[column] = {"error": str(e)}
            stages.say(f"fit {column}: not fitted ({e})")
            continue
        fits[column] = fit.to_json()
        state.write_atomic(fits_dir / f"{column}.json", json.dumps(fits[column], indent=2, default=float) + "\n")
        p = fit.params
        stages.say(
            f"fit {column}: L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3g} + {p['B']:.3g}/D^{p['beta']:.3g} "
            f"({time.monotonic() - t0:.0f}s)"
        )
    return fits


# ---------------------------------------------------------------------------------------------
# 4. samples
# ---------------------------------------------------------------------------------------------
def best_run(out: pathlib.Path) -> str | None:
    """The complete run with the lowest final validation loss."""
    import csv

    with open(out / state.RESULTS_FILE) as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == state.COMPLETE and r["loss"]]
    return min(rows, key=lambda r: float(r["loss"]))["name"] if rows else None


SAMPLE_TASKS = ("text", "t2i", "t2s")
SHOW_PER_TASK = 4  # samples written as files and shown in the report
SCORE_PER_TASK = 16  # samples scored per task (mdiff.eval evaluators)


def make_samples(out: pathlib.Path, run_name: str, stages: Stages) -> dict[str, Any]:
    """Sample each task from the run and score it; reuse DIR/samples/ when it already holds this run's."""
    samples_dir = out / "samples"
    manifest_path = samples_dir / "manifest.json"
    manifest = state.read_json(manifest_path) or {}
    if manifest.get("run") == run_name and manifest.get("complete"):
        stages.say(f"samples of {run_name} already made; reusing them")
        return manifest
    samples_dir.mkdir(exist_ok=True)
    manifest = {"run": run_name, **sample_and_score(out / "runs" / run_name, samples_dir, log=stages.say), "complete": True}
    state.write_atomic(manifest_path, json.dumps(manifest, indent=2, default=_plain) + "\n")
    return manifest


def _plain(value: Any) -> Any:
    """numpy numbers (and anything else json cannot write) as plain Python values."""
    return value.item() if hasattr(value, "item") else str(value)


def task_prompts(run: Any, task: str, n: int) -> list[Any]:
    """Display prompts: held-out captions (t2i) and transcripts (t2s); None for unconditional text."""
    if task == "text":
        return [None] * n
    from mdiff.data import raw

    if task == "t2i":
        items = raw.captioned_images(run.corpus_name, "test")
        # Alternate sources (digits, emoji) so the few shown samples cover both.
        by_source: dict[str, list] = {}
        for it in items:
            by_source.setdefault(it["source"], []).append(it["caption"])
        mixed = [c for group in zip(*by_source.values()) for c in group]
        return (mixed or [it["caption"] for it in items])[:n]
    return [it["transcript"] for it in raw.speech_items(run.corpus_name, "test", n)]


def sample_and_score(
    run_dir: pathlib.Path, samples_dir: pathlib.Path, *, tasks: tuple[str, ...] = SAMPLE_TASKS,
    show: int = SHOW_PER_TASK, score: int = SCORE_PER_TASK, log: Any = print,
) -> dict[str, Any]:
    """Write `show` samples per task (TXT / PNG / WAV via mdiff.eval) and score `score` per task.

    Returns {"step": ..., "tasks": {task: {"samples": [{"prompt", "file"}], "scores": {...}}}}.
    Tasks the run was not trained for are left out; runs on the synthetic dataset (no tokenizers)
    show token ids as text.
    """
    from mdiff.eval.commands import write_output
    from mdiff.eval.evaluate import evaluate_run, settings_for
    from mdiff.eval.generate import generate
    from mdiff.eval.restore import load_run
    from mdiff.eval.tasks import trained_tasks

    run = load_run(run_dir)
    chosen = [t for t in tasks if t in trained_tasks(run.config)]
    if run.tokenizers is None:
        chosen = [t for t in chosen if t == "text"]  # synthetic data: no captions or speech to prompt with
    result: dict[str, Any] = {"step": run.step, "tasks": {}}
    batch_size = int(run.config.sampling.batch_size)
    for task in chosen:
        t0 = time.monotonic()
        prompts = task_prompts(run, task, show)
        spans, _ = generate(run, task, prompts, settings_for(run, task), seed=int(run.config.sampling.seed), batch_size=batch_size)
        shown = [
            {"prompt": prompt, "file": write_output(run, task, span, samples_dir, f"{task}_{i:02d}")[0]}
            for i, (prompt, span) in enumerate(zip(prompts, spans))
        ]
        scores = evaluate_run(run, tasks=[task], num_samples=score)["tasks"][task]
        result["tasks"][task] = {"samples": shown, "scores": headline_scores(scores), "details": scores}
        log(f"samples {task}: {len(shown)} written, {score} scored ({time.monotonic() - t0:.0f}s): "
            + ", ".join(f"{k} {v:.3g}" for k, v in headline_scores(scores).items()))
    return result


def headline_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The top-level numeric scores of an evaluator's result (not its ceilings or examples)."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"}


# ---------------------------------------------------------------------------------------------
# 5. report
# ---------------------------------------------------------------------------------------------
def write_summary_md(result: Result, sweep_name: str, results_rows: list[dict[str, str]]) -> pathlib.Path:
    lines = [
        "# mdiff quickstart",
        "",
        f"Sweep `{sweep_name}`: {len(results_rows)} runs "
        f"({sum(r['status'] == 'complete' for r in results_rows)} complete); "
        f"wall time {result.wall_s / 60:.1f} min.",
        "",
        "## Runs",
        "",
        "| run | params | tokens | loss | text | image | audio | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results_rows:
        cells = [_num(r.get(k)) for k in ("params", "tokens", "loss", "loss_text", "loss_image", "loss_audio")]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['status']} |")
    lines += ["", "## Scaling laws  L(N, D) = E + A / N^alpha + B / D^beta", ""]
    if result.fits:
        lines += ["| loss | E | A | alpha | B | beta | points |", "|---|---:|---:|---:|---:|---:|---:|"]
        for column, fit in result.fits.items():
            if "error" in fit:
                lines.append(f"| {column} | not fitted: {fit['error']} ||||||")
            else:
                lines.append(
                    f"| {column} | {fit['E']:.4g} | {fit['A']:.4g} | {fit['alpha']:.3g} | {fit['B']:.4g} | "
                    f"{fit['beta']:.3g} | {fit['n_points']} |"
                )
    else:
        lines.append("No fits (too few complete runs).")
    lines += ["", "## Samples", ""]
    if result.samples.get("tasks"):
        lines.append(f"From the best run, `{result.best_run}`.")
        lines.append("")
        for task, info in result.samples["tasks"].items():
            scores = ", ".join(f"{k} {_num(v)}" for k, v in (info.get("scores") or {}).items())
            lines.append(f"- **{task}**: {scores or 'no scores'}")
    else:
        lines.append(result.samples.get("error", "No samples."))
    lines += ["", f"Full report: `{result.report}`" if result.report else ""]
    path = result.out / "report" / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    state.write_atomic(path, "\n".join(lines) + "\n")
    return path


def _num(value: Any) -> str:
    if value in (None, ""):
        return ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x.is_integer():
        return str(int(x)) if abs(x) < 1e6 else f"{x:.3g}"
    return f"{x:.4g}"


TASK_TITLES = {"text": "Text (unconditional)", "t2i": "Text to image", "t2s": "Text to speech"}


def samples_html(out: pathlib.Path, samples: dict[str, Any], report_dir: pathlib.Path) -> str:
    """The report's samples section: per task, the prompts with their samples (text, images, audio
    players) and the evaluators' scores. Media are linked relative to the report folder."""
    from html import escape

    parts = [f"<p>From the best run, <code>{escape(str(samples.get('run')))}</code> (step {samples.get('step')}).</p>"]
    for task, info in samples.get("tasks", {}).items():
        parts.append(f"<h3>{escape(TASK_TITLES.get(task, task))}</h3>")
        scores = info.get("scores") or {}
        if scores:
            cells = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in scores.items())
            parts.append(f"<table class='scores'><tr><th>score</th><th>value</th></tr>{cells}</table>")
        items = []
        for sample in info.get("samples", []):
            path = out / "samples" / sample["file"]
            rel = os.path.relpath(path, report_dir)
            prompt = f"<div class='prompt'>{escape(str(sample['prompt']))}</div>" if sample.get("prompt") else ""
            if path.suffix == ".png":
                body = f"<img src='{escape(rel)}' width='96' style='image-rendering: pixelated' alt='{escape(str(sample.get('prompt')))}'>"
            elif path.suffix == ".wav":
                body = f"<audio controls preload='none' src='{escape(rel)}'></audio>"
            else:
                text = path.read_text() if path.exists() else ""
                body = f"<pre>{escape(text.strip())}</pre>"
            items.append(f"<div class='sample'>{prompt}{body}</div>")
        parts.append("<div class='samples'>" + "".join(items) + "</div>")
    return "\n".join(parts)


def build_report(out: pathlib.Path, samples: dict[str, Any]) -> pathlib.Path:
    """The analysis report of the sweep directory, with the quickstart's samples section added."""
    from analysis.report import build_report as analysis_report

    report_dir = out / "report"
    sections = [("Samples", samples_html(out, samples, report_dir))] if samples.get("tasks") else []
    return pathlib.Path(analysis_report(out, extra_sections=sections))


# ---------------------------------------------------------------------------------------------
# The whole thing
# ---------------------------------------------------------------------------------------------
def quickstart(
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    sweep: str = DEFAULT_SWEEP,
    parallel: int = 2,
    data_dir: str | None = None,
    force: bool = False,
    samples: bool = True,
    n_bootstrap: int = 20,
    stream: TextIO | None = sys.stderr,
) -> Result:
    from mdiff.sweeps_lib.runner import Progress, run_sweep
    from mdiff.sweeps_lib.expand import expand, load_sweep

    stages = Stages(5, stream)
    out = pathlib.Path(out).resolve()
    result = Result(out)
    state.check_writable(out)  # before minutes of data building
    stages.begin("data")
    env = {}
    data_config = sweep_data_config(sweep)
    if data_config.dataset == "embedded":
        env["MDIFF_DATA_DIR"] = ensure_dataset(data_dir, data_config, stages)
        os.environ["MDIFF_DATA_DIR"] = env["MDIFF_DATA_DIR"]  # the samples stage reads it in this process
    else:
        stages.say("this sweep trains on the synthetic dataset; nothing to build")

    stages.begin(f"training sweep {sweep} ({parallel} at a time)")
    sw = load_sweep(sweep)
    progress = Progress(sw.name, expand(sw), out, stream=stream, heartbeat_s=20.0)
    outcome = run_sweep(sw, out, parallel=parallel, force=force, env=env, progress=progress)
    result.failed_runs = list(outcome.failed)
    if outcome.interrupted:
        raise KeyboardInterrupt
    complete = len(outcome.complete) + len(outcome.skipped)
    if not complete:
        raise SweepError(f"no run of {sw.name} completed; see {out / 'logs'} (mdiff sweep status {out})")

    stages.begin("scaling-law fits per modality")
    result.fits = fit_losses(out, stages, n_bootstrap=n_bootstrap)

    stages.begin("samples from the best run")
    result.best_run = best_run(out)
    if samples and result.best_run:
        try:
            result.samples = make_samples(out, result.best_run, stages)
        except (ImportError, ValueError, OSError) as e:  # a missing evaluator is reported, not fatal
            result.samples = {"error": f"samples not made: {e}"}
            stages.say(result.samples["error"])
    else:
        stages.say("skipped")

    stages.begin("report")
    try:
        result.report = build_report(out, result.samples)
    except ImportError as e:
        stages.say(f"HTML report not built ({e}); summary.md is")
    result.wall_s = stages.elapsed()
    with open(out / state.RESULTS_FILE) as f:
        import csv

        rows = list(csv.DictReader(f))
    result.summary = write_summary_md(result, sw.name, rows)
    stages.say(f"done in {result.wall_s / 60:.1f} min: {result.report or result.summary}")
    return result


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output (sweep) directory (default {DEFAULT_OUT})")
    parser.add_argument("--parallel", type=int, default=2, help="training runs at a time (default 2)")
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"the scaling sweep to run (default {DEFAULT_SWEEP})")
    parser.add_argument("--data-dir", default=None, help="dataset directory (default $MDIFF_DATA_DIR or ~/.cache/mdiff/data)")
    parser.add_argument("--no-samples", action="store_true", help="skip sampling and scoring")
    parser.add_argument("--force", action="store_true", help="use an output directory that holds another sweep")


def run(args: argparse.Namespace) -> int:
    try:
        result = quickstart(
            args.out, sweep=args.sweep, parallel=args.parallel, data_dir=args.data_dir, force=args.force,
            samples=not args.no_samples,
        )
    except SweepError as e:
        print(f"mdiff quickstart: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("mdiff quickstart: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.report or result.summary)
    return EXIT_FAILED if result.failed_runs else 0
