"""`mdiff quickstart`: the whole suite, small, on a laptop-class CPU; interrupted and rerun, it continues.

Stages (each prints a header with the elapsed time; each skips work that is already done):
  1. data     build the embedded tri-modal dataset if it is missing (`mdiff.data.build`)
  2. sweep    the CPU scaling sweep (sweeps/scaling.py:cpu, an IsoFLOP grid of 4 sizes x 3 budgets)
              in DIR, N runs at a time, with an overall progress line
  3. samples  text, text-to-image and text-to-speech from the best run, scored -> DIR/samples/
  4. report   `analysis.report`: scaling laws L(N, D) for the loss and each modality's loss, IsoFLOP
              optima, plots and tables, plus the quickstart's samples section (images, audio players)
              -> DIR/report/index.html, DIR/report/summary.md, DIR/report/analyses.json

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

from mdiff.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from mdiff.sweeps import state
from mdiff.sweeps.define import SweepError

DEFAULT_OUT = "quickstart_out"
DEFAULT_SWEEP = "scaling:cpu"


class Stages:
    """Numbered stage headers and notes with the elapsed time, so a long quickstart shows where it is."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr):
        self.total, self.stream, self.start, self.n = total, stream, time.monotonic(), 0
        self.seconds: dict[str, float] = {}  # stage title -> wall seconds (the one running: so far)
        self._current: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def begin(self, key: str, title: str) -> None:
        """Start stage `key` (its timing entry), announced as `title`."""
        self.end()
        self.n += 1
        self._current = (key, time.monotonic())
        self.say(f"[{self.n}/{self.total}] {title}")

    def end(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.seconds[name] = round(time.monotonic() - started, 1)
            self._current = None

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
    from mdiff.sweeps.define import override_args
    from mdiff.sweeps.expand import load_sweep

    sw = load_sweep(sweep_spec)
    return load_config(sw.config, override_args(sw.common), check=False).data


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
# 3. samples
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
# 4. report
# ---------------------------------------------------------------------------------------------
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
            prompt = f"<figcaption>{escape(str(sample['prompt']))}</figcaption>" if sample.get("prompt") else ""
            if path.suffix == ".png":
                body = f"<img src='{escape(rel)}' width='96' style='image-rendering: pixelated' alt='{escape(str(sample.get('prompt')))}'>"
            elif path.suffix == ".wav":
                body = f"<audio controls preload='none' src='{escape(rel)}'></audio>"
            else:
                text = path.read_text() if path.exists() else ""
                body = f"<pre style='white-space: pre-wrap'>{escape(text.strip())}</pre>"
            items.append(f"<figure>{body}{prompt}</figure>")
        parts.append("<div class='samples'>" + "".join(items) + "</div>")
    return "\n".join(parts)


def samples_markdown(samples: dict[str, Any]) -> str:
    lines = [f"From the best run, `{samples.get('run')}` (step {samples.get('step')}); files in `samples/`."]
    for task, info in samples.get("tasks", {}).items():
        scores = ", ".join(f"{k} {v:.4g}" for k, v in (info.get("scores") or {}).items())
        lines.append(f"- **{TASK_TITLES.get(task, task)}**: {scores or 'no scores'}")
    return "\n".join(lines)


def quickstart_sections(result: Result, sweep_name: str) -> list[Any]:
    """The quickstart's own report sections: how it went, and the samples."""
    from analysis.report import Section

    notes = [
        f"mdiff quickstart: sweep {sweep_name}; {result.wall_s / 60:.1f} min from the start to this report.",
        f"best run (lowest validation loss): {result.best_run}" if result.best_run else "no complete run",
    ]
    if result.failed_runs:
        notes.append(f"failed runs: {', '.join(result.failed_runs)} (logs in logs/; rerun to retry)")
    sections = [Section("Quickstart", notes=notes)]
    if result.samples.get("tasks"):
        body = samples_html(result.out, result.samples, result.out / "report")
        sections.append(Section("Samples", body_html=body, markdown=samples_markdown(result.samples)))
    elif result.samples.get("error"):
        sections.append(Section("Samples", notes=[result.samples["error"]]))
    return sections


def fit_line(fit: dict[str, Any]) -> str:
    """One fit from analyses.json in words: a fit the data cannot pin down is never printed as a finding."""
    if not fit.get("identifiable", True):
        reasons = (fit.get("diagnostics") or {}).get("reasons") or ["see the report"]
        return f"NOT IDENTIFIABLE from these runs, not a finding ({reasons[0]})"
    ci = fit.get("ci95") or {}
    alpha = f"{fit['alpha']:.3g}" + (f" [{ci['alpha'][0]:.3g}, {ci['alpha'][1]:.3g}]" if ci.get("alpha") else "")
    beta = f"{fit['beta']:.3g}" + (f" [{ci['beta'][0]:.3g}, {ci['beta'][1]:.3g}]" if ci.get("beta") else "")
    return f"L = {fit['E']:.3g} + {fit['A']:.3g}/N^alpha + {fit['B']:.3g}/D^beta, alpha {alpha}, beta {beta}"


def build_report(result: Result, sweep_name: str, n_bootstrap: int) -> pathlib.Path:
    """analysis.report on the sweep directory (fits per modality, IsoFLOP, plots, tables, summary.md),
    with the quickstart's sections added; returns DIR/report/index.html."""
    from analysis.report import build_report as analysis_report

    page = analysis_report(result.out, extra_sections=quickstart_sections(result, sweep_name), n_bootstrap=n_bootstrap)
    analyses = state.read_json(result.out / "report" / "analyses.json") or {}
    result.fits = {"loss": analyses.get("scaling_fit"), **(analyses.get("per_modality_fits") or {})}
    result.fits = {k: v for k, v in result.fits.items() if v}
    return pathlib.Path(page)


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
    n_bootstrap: int = 1000,
    stream: TextIO | None = sys.stderr,
) -> Result:
    """Run every stage (skipping work already done) and return where things are."""
    from mdiff.sweeps.expand import expand, load_sweep
    from mdiff.sweeps.runner import Progress, run_sweep

    if n_bootstrap < 0:
        raise SweepError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    stages = Stages(4, stream)
    out = pathlib.Path(out).resolve()
    result = Result(out)
    state.check_writable(out)  # before minutes of data building
    stages.begin("data", "data")
    env = {}
    data_config = sweep_data_config(sweep)
    if data_config.dataset == "embedded":
        env["MDIFF_DATA_DIR"] = ensure_dataset(data_dir, data_config, stages)
        os.environ["MDIFF_DATA_DIR"] = env["MDIFF_DATA_DIR"]  # the samples stage reads it in this process
    else:
        stages.say(f"this sweep trains on the {data_config.dataset} dataset; nothing to build")

    stages.begin("sweep", f"training sweep {sweep} ({parallel} at a time)")
    sw = load_sweep(sweep)
    progress = Progress(sw.name, expand(sw), out, stream=stream, heartbeat_s=20.0)
    outcome = run_sweep(sw, out, parallel=parallel, force=force, env=env, progress=progress)
    result.failed_runs = list(outcome.failed)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if not outcome.complete and not outcome.skipped:
        raise SweepError(f"no run of {sw.name} completed; see {out / 'logs'} (mdiff sweep status {out})")

    stages.begin("samples", "samples from the best run, scored")
    result.best_run = best_run(out)
    if samples and result.best_run:
        try:
            result.samples = make_samples(out, result.best_run, stages)
        except Exception as e:  # noqa: BLE001 - the report still gets written, and says what went wrong
            result.samples = {"error": f"samples not made: {type(e).__name__}: {e}"}
            stages.say(result.samples["error"])
    else:
        stages.say("skipped")

    stages.begin("report", "report: scaling-law fits per modality, plots, tables, samples")
    result.wall_s = stages.elapsed()
    result.report = build_report(result, sw.name, n_bootstrap)
    result.summary = out / "report" / "summary.md"
    for column, fit in result.fits.items():
        stages.say(f"fit {column}: {fit_line(fit)}")
    stages.end()
    result.wall_s = stages.elapsed()
    # Stage timings, for benchmarks (a rerun that skips work shows it here too).
    timings = {"wall_s": round(result.wall_s, 1), "stages_s": stages.seconds, "sweep": sw.name, "parallel": parallel,
               "cpus": os.cpu_count(), "runs_trained_now": len(outcome.started)}  # fmt: skip
    state.write_atomic(out / "quickstart.json", json.dumps(timings, indent=2) + "\n")
    stages.say(f"done in {result.wall_s / 60:.1f} min: open {result.report}")
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
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap replicates for the fits' intervals (default 1000; 0: point fits only)")
    parser.add_argument("--force", action="store_true", help="use an output directory that holds another sweep")


def run(args: argparse.Namespace) -> int:
    try:
        result = quickstart(
            args.out, sweep=args.sweep, parallel=args.parallel, data_dir=args.data_dir, force=args.force,
            samples=not args.no_samples, n_bootstrap=args.bootstrap,
        )
    except SweepError as e:
        print(f"mdiff quickstart: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("mdiff quickstart: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.report)
    return EXIT_FAILED if result.failed_runs or "error" in result.samples else 0
