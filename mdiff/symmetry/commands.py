"""`mdiff symmetry train|plot`: argument handling only (JAX is imported inside `run`).

  mdiff symmetry train --config experiments/symmetry_digits.py:quick --workdir runs/sgm [--resume|--overwrite]
                       [--config.inference.steps=500 ...]
  mdiff symmetry plot runs/sgm
"""

from __future__ import annotations

import argparse
import sys

from mdiff.errors import EXIT_BAD_INPUT, EXIT_FAILED
from mdiff.rundir import EXIT_STATUS


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="symmetry_command", metavar="ACTION")
    train = sub.add_parser("train", help="train both SGM stages (and any VAEs of config.vae.models) in WORKDIR")
    train.add_argument("--config", required=True, help="FILE.py:VARIANT, e.g. experiments/symmetry_digits.py:quick")
    train.add_argument("overrides", nargs="*", metavar="--config.KEY=VALUE", help="override config keys")
    train.add_argument("--workdir", required=True, help="run directory")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in WORKDIR even if its config differs")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in WORKDIR and start afresh")
    plot = sub.add_parser("plot", help="write curves, prototypes/resamples and marginals to WORKDIR/plots/")
    plot.add_argument("workdir", help="a symmetry run directory")


def run(args: argparse.Namespace) -> int:
    from mdiff.config import ConfigError, load_config
    from mdiff.rundir import WorkdirError
    from mdiff.symmetry import defaults  # noqa: F401  (registers the symmetry validators)
    from mdiff.symmetry.transforms import TransformError

    command = getattr(args, "symmetry_command", None)
    if command is None:
        print("mdiff symmetry: choose an action: train or plot", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if command == "plot":
            from mdiff.symmetry.plots import plot_run

            for path in plot_run(args.workdir):
                print(path)
            return 0
        config = load_config(args.config, args.overrides or ())
        if config.get("kind") != "symmetry":
            raise ConfigError(f"config {args.config!r} has kind={config.get('kind')!r}; "
                              "mdiff symmetry train needs a symmetry config (experiments/symmetry_*.py)")
        from mdiff.symmetry.train import train_and_evaluate

        try:
            summary = train_and_evaluate(config, args.workdir, resume=args.resume, overwrite=args.overwrite)
        finally:
            from mdiff.rundir import release_workdir

            release_workdir(args.workdir)  # the lock prepare_workdir took for this run
    except (ConfigError, WorkdirError, TransformError) as e:
        print(f"mdiff symmetry {command}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_STATUS.get(summary.get("status"), EXIT_FAILED)
