"""`mdiff nelbo`: a trained run's validation NELBO under several masking schedules, mean +- standard error.

Why the schedules must agree: the denoiser has no time input, so it sees only the masked sequence.
Substituting the mask rate u = 1 - alpha(t) turns the continuous-time bound
E_t[w(t) * sum over masked targets of -log p(x0 | x_t)], w = -alpha'/(1 - alpha), into
integral_0^1 (1/u) E[sum over masked targets of -log p | each target masked with probability u] du,
which no longer names the schedule (for every schedule with alpha(0) = 1 and alpha(1) = 0, or with the
missing ends accounted for). So at a fixed model every schedule estimates the same number; the schedule
only changes the estimator's variance (and, in training, which mask rates the gradient sees most).

The estimate: the same `batches` validation batches for every schedule; repeat r draws fresh t and masks
with the key fold_in(seed, r) (the same keys for every schedule: common random numbers, so the paired
difference against the first schedule has its own, smaller, standard error). Per repeat, nats per target
token of each modality; reported are the mean over repeats and its standard error (std / sqrt(repeats)).
The loss is the trainer's evaluation step (mdiff.train.step.make_eval_step) with only the schedules
swapped, so every convention of the training loss (targets, t_min clipping, end terms) applies as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from mdiff.errors import InputError

NELBO_FILE = "nelbo_schedules.json"
DEFAULT_SCHEDULES = "linear,cosine,sine,polynomial(2),geometric(0.01,20)"


class NelboError(InputError):
    """Bad arguments for the schedule-invariance measurement."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean and standard error over repeats of one quantity (nats per target token)."""

    mean: float
    se: float
    repeats: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Estimate":
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
        return cls(mean, math.sqrt(var / n), n)


def _per_repeat_losses(sums: dict[str, float]) -> dict[str, float]:
    from mdiff.diffusion.loss import per_token_metrics

    metrics = per_token_metrics(sums)
    return {("all" if k == "loss" else k.split("/", 1)[1]): v for k, v in metrics.items() if k == "loss" or k.startswith("loss/")}


class _Estimator:
    """Validation batches and compiled evaluation steps shared by every run of one call.

    Runs of the same model shape reuse one compiled step per schedule (the weights are arguments).
    """

    def __init__(self, schedules: Sequence[str]):
        from mdiff.diffusion.schedules import modality_schedules

        self.specs = {name: modality_schedules({"schedule": name}) for name in schedules}  # ScheduleError on a bad name
        self.steps: dict[tuple[str, str], Any] = {}
        self.data: dict[str, list[dict[str, Any]]] = {}

    def batches(self, config: Any, count: int) -> list[dict[str, Any]]:
        """The first `count` validation batches of this data config (cached by the data section)."""
        import numpy as np

        from mdiff.data.pipeline import make_pipeline, open_corpus

        key = json.dumps(config.data.to_dict(), sort_keys=True, default=str) + f"|{config.train.batch}|{config.seed}"
        if key not in self.data:
            pipeline = make_pipeline(config, "validation", corpus=open_corpus(config, "validation"))
            try:
                self.data[key] = [{k: np.asarray(v) for k, v in next(pipeline).items()} for _ in range(count)]
            finally:
                pipeline.close()
        return self.data[key]

    def step(self, name: str, run: Any, config: Any):
        import jax

        from mdiff.train import step as step_lib

        key = (name, repr(run.graphdef))
        if key not in self.steps:
            base = step_lib.loss_setup(config, run.graphdef, run.state, run.vocab, train=False)
            self.steps[key] = jax.jit(step_lib.make_eval_step(dataclasses.replace(base, schedules=self.specs[name])))
        return self.steps[key]


def schedule_nelbo(
    workdir: str | pathlib.Path,
    schedules: Sequence[str],
    *,
    repeats: int = 32,
    batches: int = 4,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    estimator: _Estimator | None = None,
) -> dict[str, Any]:
    """NELBO per schedule and modality at the run's newest checkpoint (see the module docstring).

    `mix` evaluates on validation batches drawn with these modality fractions instead of the run's own
    (so runs trained on different mixes are scored on the same tokens).
    """
    import jax
    from flax import nnx

    from mdiff.diffusion.schedules import schedules_by_name
    from mdiff.eval.restore import load_run
    from mdiff.train.loop import eval_batch_size

    if repeats < 2 or batches < 1 or not schedules:
        raise NelboError(f"need repeats >= 2 (got {repeats}), batches >= 1 (got {batches}) and at least one schedule")
    estimator = estimator or _Estimator(schedules)
    run = load_run(workdir)
    config = run.config.copy_and_resolve_references()
    rows = eval_batch_size(config)
    with config.unlocked():
        config.train.batch = rows
        config.seed = 0  # validation batches do not depend on the run's seed: every run sees the same tokens
        if mix is not None:
            config.data.mix = dict(mix)
    data = estimator.batches(config, batches)
    params = nnx.to_pure_dict(run.state)
    per_schedule: dict[str, list[dict[str, float]]] = {}
    started = time.perf_counter()
    for name in schedules:
        eval_step = estimator.step(name, run, config)
        values = []
        for r in range(repeats):
            totals: dict[str, float] = {}
            for b, batch in enumerate(data):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), r), b)
                for k, v in jax.device_get(eval_step(params, batch, key)).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
            values.append(_per_repeat_losses(totals))
        per_schedule[name] = values
    specs = {n: estimator.specs[n] for n in schedules}
    return _summary(run, per_schedule, specs, schedules_by_name, repeats=repeats, batches=batches, rows=rows,
                    seed=seed, mix=dict(config.data.mix), seconds=time.perf_counter() - started)


def _summary(run, per_schedule, specs, names_of, **meta) -> dict[str, Any]:
    reference = next(iter(per_schedule))
    results = []
    for name, values in per_schedule.items():
        for column in values[0]:
            est = Estimate.of([v[column] for v in values])
            diff = Estimate.of([v[column] - ref[column] for v, ref in zip(values, per_schedule[reference])])
            results.append(dict(schedule=name, modality=column, mean=est.mean, se=est.se,
                                diff_vs_reference=diff.mean, diff_se=diff.se))
    return dict(workdir=str(run.workdir), step=run.step, trained_schedules=dict(run.config.diffusion.schedule),
                reference=reference, resolved={n: names_of(s) for n, s in specs.items()}, results=results, **meta)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, action="append",
                        help="a training run directory; repeat it to measure several runs in one process")
    parser.add_argument("--schedules", default=DEFAULT_SCHEDULES,
                        help="comma-separated schedule names, each applied to every modality; the first is the "
                             f"reference for paired differences (default: {DEFAULT_SCHEDULES})")
    parser.add_argument("--repeats", type=int, default=32, help="independent draws of t and masks (default 32)")
    parser.add_argument("--batches", type=int, default=4, help="validation batches per draw (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", type=_mix, default=None, metavar="text=F,image=F,audio=F",
                        help="evaluate on validation batches with these modality fractions (default: each run's own)")
    parser.add_argument("--out", default=None, help=f"result file, one --workdir only (default: WORKDIR/{NELBO_FILE})")


def _mix(text: str) -> dict[str, float]:
    try:
        mix = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected text=F,image=F,audio=F") from None
    if abs(sum(mix.values()) - 1.0) > 1e-6 or min(mix.values()) < 0:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: fractions must be >= 0 and sum to 1")
    return mix


def split_schedules(text: str) -> list[str]:
    """'linear;polynomial(2)' or 'linear,cosine' -> names (commas inside parentheses belong to the name)."""
    names, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch in ",;" and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += ch
    names.append(current.strip())
    return [n for n in names if n]


def run(args: argparse.Namespace) -> int:
    from mdiff import rundir

    if args.out and len(args.workdir) > 1:
        raise NelboError("--out names one result file: give one --workdir, or leave --out out")
    names = split_schedules(args.schedules)
    estimator = _Estimator(names)
    for workdir in args.workdir:
        out = pathlib.Path(args.out) if args.out else pathlib.Path(workdir) / NELBO_FILE
        result = schedule_nelbo(workdir, names, repeats=args.repeats, batches=args.batches, seed=args.seed,
                                mix=args.mix, estimator=estimator)
        rundir.write_json_atomic(out, result)
        for row in result["results"]:
            print(f"{row['schedule']:>20} {row['modality']:>6}: {row['mean']:.4f} +- {row['se']:.4f} "
                  f"(vs {result['reference']}: {row['diff_vs_reference']:+.4f} +- {row['diff_se']:.4f})", file=sys.stderr)
        print(f"wrote {out} ({result['seconds']:.0f} s)", file=sys.stderr)
    return 0
