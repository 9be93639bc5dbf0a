"""One point of a sampling sweep: score a trained run with other `config.sampling` settings (no training).

    python -m mdiff.sweeps.sample_point --run TRAINED_RUN --config FILE.py:VARIANT --workdir DIR \
        [--config.sampling.t2i.guidance=2.0 ...]

The trained run's own config is used (`--config` only names the sweep's base experiment); the overrides
must be `sampling.*` keys. The tasks scored are those whose settings the point changes (all trained tasks
when it changes shared keys). DIR gets config.json (the sampling section used) and summary.json with
`eval/<task>/<score>` figures, so `mdiff sweep` collects them into results.csv like any run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from mdiff.config import ConfigError, apply_overrides, parse_override


def tasks_touched(keys: Sequence[str], trained: Sequence[str]) -> list[str]:
    """Tasks whose sampling section a point changes; every trained task for shared keys (seed ...)."""
    per_task = {k.split(".")[1] for k in keys if k.count(".") >= 2}
    shared = [k for k in keys if k.count(".") < 2]
    return list(trained) if shared or not per_task else [t for t in trained if t in per_task]


def flat_scores(prefix: str, scores: dict) -> dict[str, float]:
    """Numeric scores as `prefix/name`, with the reference points as `prefix/ceiling/name`, `prefix/shuffled/name`.

    The references are the same at every point; results.csv keeps them so each score can be read
    against them (and the text entropy guard of analysis/sampling.py needs the real-text entropy).
    """
    out = {}
    for name, value in scores.items():
        if isinstance(value, dict) and name in ("ceiling", "shuffled"):
            out.update(flat_scores(f"{prefix}/{name}", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "seconds":
            out[f"{prefix}/{name}"] = float(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdiff.sweeps.sample_point", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the trained run directory to sample from")
    parser.add_argument("--config", required=True, help="the sweep's base experiment (for the record)")
    parser.add_argument("--workdir", required=True, help="where this point's config.json and summary.json go")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = dict(parse_override(a) for a in rest)
        bad = [k for k in overrides if not k.startswith("sampling.")]
        if bad:
            raise ConfigError(f"a sampling sweep point may only change sampling.* keys, not {', '.join(bad)}")
        return _score(args, rest, list(overrides))
    except (ConfigError, ValueError) as e:
        print(f"sample_point: error: {e}", file=sys.stderr)
        return 2


def _score(args: argparse.Namespace, override_args: list[str], keys: list[str]) -> int:
    from mdiff import rundir
    from mdiff.config import to_dict, validate
    from mdiff.eval.evaluate import evaluate_run
    from mdiff.eval.restore import load_run
    from mdiff.eval.tasks import trained_tasks

    started = time.time()
    run = load_run(args.run)
    with run.config.unlocked():
        apply_overrides(run.config, override_args)
    validate(run.config)
    tasks = tasks_touched(keys, trained_tasks(run.config))
    rundir.write_json_atomic(f"{args.workdir}/config.json", {"run": str(args.run), "sampling": to_dict(run.config)["sampling"]})
    results = evaluate_run(run, tasks=tasks)
    summary = {"status": "complete", "run": str(args.run), "step": run.step, "wall_s": time.time() - started}
    for task, scores in results["tasks"].items():
        summary.update(flat_scores(f"eval/{task}", scores))
    rundir.write_summary(args.workdir, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
