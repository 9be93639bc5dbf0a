"""The `mdiff` command: parses arguments and dispatches to importable functions. Nothing else lives here.

Each subcommand's logic sits in its package (a module with `configure(parser)` and `run(args) -> int`).
Bad input (any `mdiff.errors.InputError`: config, workdir, ids, files) is reported as one line on stderr
with exit code 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mdiff.errors import EXIT_BAD_INPUT, InputError
from mdiff.runtime import keep_freed_memory, reexec_with_huge_pages, use_compilation_cache


# name -> (help, module, configure function, run function). Modules are imported when the parser is
# built, so they must import heavy libraries (JAX) inside `run`, not at module level.
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": ("train one model: train_and_evaluate(config, workdir)", "mdiff.cli", "configure_train", "run_train"),
    "sample": ("sample from a trained run (text, t2i, i2t, t2s, s2t)", "mdiff.eval.commands", "configure_sample", "run_sample"),
    "eval": ("score a trained run's samples with every evaluator", "mdiff.eval.commands", "configure_eval", "run_eval"),
    "nelbo": ("a trained run's validation NELBO under several masking schedules (mean +- SE)", "mdiff.eval.nelbo", "configure", "run"),
    "sweep": ("expand, run, inspect or emit a sweep of runs", "mdiff.sweeps.commands", "configure", "run"),
    "fit": ("fit scaling laws and the batch/mixing/schedule analyses from a CSV", "analysis.commands", "configure_fit", "run_fit"),
    "report": ("build report/index.html for a sweep directory", "analysis.commands", "configure_report", "run_report"),
    "data": ("build or inspect the embedded tri-modal dataset", "mdiff.data.commands", "configure", "run"),
    "quickstart": ("the whole suite on a CPU: data, sweep, fits, samples, report", "mdiff.quickstart", "configure", "run"),
    "symmetry": ("train or plot the symmetry generative model", "mdiff.symmetry.commands", "configure", "run"),
}


# ---------------------------------------------------------------------------------------------
# train (argument handling here; the loop lives in mdiff.train.loop)
# ---------------------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="FILE.py:VARIANT, e.g. experiments/quickstart.py:cpu-s; without :VARIANT the file's first variant "
        "(the first name in its VARIANTS) is used",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="--config.KEY=VALUE",
        help="override any config key, e.g. --config.model.width=256 --config.train.batch=16. Build-time keys "
        "(data.tokenizer.*, data.voices, data.speeds, data.pitches, data.speech_variants) act in `mdiff data build` "
        "only; optim.width_base, depth_base and depth_alpha act only with optim.completep=True",
    )


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "One trainer per workdir: a second `mdiff train` on a workdir in training is refused (a lock left by a "
        "killed process is taken over). Exit status: 0 complete (also when it already was), 1 failed, 2 bad input, "
        "75 preempted: stopped early by SIGTERM with a checkpoint saved; rerun the same command to resume."
    )
    add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run directory (config.json, metrics.jsonl, checkpoints/ ...)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue a run in WORKDIR even if its config differs")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in WORKDIR and start afresh")


def run_train(args: argparse.Namespace) -> int:
    """Exit status: 0 complete, 1 failed, 2 bad input, 75 preempted (resumable: rerun the same command)."""
    from mdiff import rundir
    from mdiff.config import load_config

    config = load_config(args.config, args.overrides)
    mode = rundir.prepare_workdir(args.workdir, config, resume=args.resume, overwrite=args.overwrite)
    try:
        done = rundir.read_summary(args.workdir) if mode == "resume" and not args.resume else None
        if done and done.get("status") == "complete":
            print(f"mdiff train: {args.workdir} is complete ({done.get('steps')} of {done.get('steps_planned')} steps); "
                  "nothing to do (--resume retrains steps whose checkpoint is lost; --overwrite starts afresh)", file=sys.stderr)
            return 0
        from mdiff.train.loop import train_and_evaluate

        summary = train_and_evaluate(config, args.workdir)
        return rundir.EXIT_STATUS.get(summary.get("status"), 1)
    finally:
        rundir.release_workdir(args.workdir)


# ---------------------------------------------------------------------------------------------
# Parser and dispatch
# ---------------------------------------------------------------------------------------------
def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull `--config.a.b=v` (and `--config.a.b v`) out of argv: argparse would take them for options."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.") and arg != "--config":
            if "=" not in arg and i + 1 < len(argv):
                arg, i = f"{arg}={argv[i + 1]}", i + 1
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(
        prog="mdiff",
        description="mdiff: tri-modal masked diffusion and the symmetry generative model, in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"mdiff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners: dict[str, Any] = {}
    for name, (help_text, module_name, configure_name, run_name) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)  # an ImportError here is a bug: let it show
        getattr(module, configure_name)(sp)
        runners[name] = getattr(module, run_name)
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command line, not a call from Python: restart once with huge-page malloc
        reexec_with_huge_pages()
    keep_freed_memory()  # before JAX's threads allocate: no page faults on XLA:CPU buffers each step
    use_compilation_cache()  # every point of a sweep compiles the same programs: compile them once
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, overrides = _split_overrides(argv)
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"mdiff {args.command} takes no --config.KEY=VALUE overrides (got {overrides[0]})")
        args.overrides = list(args.overrides or []) + overrides
    runner = runners[args.command]
    try:
        return int(runner(args) or 0)
    except InputError as e:
        print(f"mdiff {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mdiff")
    except Exception:  # not installed (running from a checkout)
        return "0.1.0"


if __name__ == "__main__":
    sys.exit(main())
