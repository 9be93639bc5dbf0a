"""`mdiff sweep run|status|emit|list` (wired into `mdiff` by mdiff/cli.py)."""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

from mdiff.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from mdiff.sweeps import (
    LAUNCHERS, SlurmOptions, SweepError, available_sweeps, command_line, emit, expand, load_sweep, prepare, run_sweep,
    state, sweep_status, write_results,
)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    spec_help = "a shipped sweep NAME:VARIANT (e.g. scaling:cpu) or FILE.py:VARIANT"

    p = sub.add_parser("run", help="run every point not yet complete, N at a time")
    p.add_argument("sweep", metavar="SWEEP", help=spec_help)
    p.add_argument("--out", required=True, help="sweep directory (sweep.json, runs/, logs/, results.csv)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--dry-run", action="store_true", help="validate every point and print the plan; write nothing")
    p.add_argument("--force", action="store_true", help="use a directory that holds another sweep definition")

    p = sub.add_parser("status", help="summarise a sweep directory: done, running, failed")
    p.add_argument("dir", metavar="DIR")

    p = sub.add_parser("emit", help="write a SLURM job-array script and a plain command list")
    p.add_argument("sweep", metavar="SWEEP", help=spec_help)
    p.add_argument("--out", required=True, help="sweep directory the runs will write to")
    p.add_argument("--launcher", default="slurm", choices=LAUNCHERS)
    p.add_argument("--nodes", type=int, default=0, help="hosts per run (default: the sweep's own)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--time", default="24:00:00", help="SLURM time limit per point")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--max-concurrent", type=int, default=0, help="at most this many points at once")
    p.add_argument("--python", default="", help="interpreter on the cluster (default: this one)")
    p.add_argument("--term-before", type=int, default=300, metavar="SECONDS",
                   help="SLURM sends SIGTERM this long before the time limit; the run checkpoints, exits 75 "
                   "and the task requeues itself (default 300)")
    p.add_argument("--force", action="store_true", help="use a directory that holds another sweep definition")

    sub.add_parser("list", help="the shipped sweeps, their variants and point counts")


def run(args: argparse.Namespace) -> int:
    try:
        return {"run": _cmd_run, "status": _cmd_status, "emit": _cmd_emit, "list": _cmd_list}[args.sweep_command](args)
    except SweepError as e:
        print(f"mdiff sweep {args.sweep_command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    outcome = run_sweep(args.sweep, args.out, parallel=args.parallel, force=args.force)
    print(f"results: {outcome.sweep_dir / state.RESULTS_FILE}")
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.ok else EXIT_FAILED


def _dry_run(args: argparse.Namespace) -> int:
    sw = load_sweep(args.sweep)
    runs = expand(sw)
    sweep_dir = pathlib.Path(args.out).resolve()
    old = state.read_sweep_file(sweep_dir) if sweep_dir.is_dir() else None
    if old is not None:
        diffs = state.definition_differences(old, state.definition(sw.name, sw.config, runs, sw.axes(), sw.common))
        if diffs and not args.force:
            raise SweepError(f"{str(sweep_dir)!r} holds another sweep definition ({'; '.join(diffs[:3])})")
    print(f"sweep {sw.name}: {len(runs)} points, all valid; base config {sw.config}")
    for run_spec in runs:
        st = state.run_state(sweep_dir, run_spec.name)
        action = {"complete": "skip (complete)", "running": "skip (running elsewhere)", "partial": "resume"}.get(st, "start")
        print(f"  {action:24s} {shlex.join(command_line(run_spec, sweep_dir, sw.common))}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    sweep_dir = pathlib.Path(args.dir)
    groups = sweep_status(sweep_dir)
    spec = state.read_sweep_file(sweep_dir) or {}
    total = sum(len(v) for v in groups.values())
    print(f"{sweep_dir}: sweep {spec.get('sweep', '?')}, {total} points")
    for st in (state.COMPLETE, state.RUNNING, state.FAILED, state.PARTIAL, state.PENDING):
        names = groups.get(st, [])
        if names:
            print(f"  {st:9s} {len(names):4d}  {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")
    for name in groups.get(state.FAILED, []):
        record = state.read_json(state.log_path(sweep_dir, name, ".failed.json")) or {}
        print(f"  failed {name}: exit {record.get('returncode')}: {(record.get('error') or ['?'])[-1]}")
    try:
        print(f"results: {write_results(sweep_dir)}")
    except SweepError as e:  # a read-only directory still gets its status
        print(f"results.csv not refreshed: {e}")
    return 0 if not groups.get(state.FAILED) else EXIT_FAILED


def _cmd_emit(args: argparse.Namespace) -> int:
    sw, runs, sweep_dir = prepare(args.sweep, args.out, force=args.force)
    options = SlurmOptions(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time, partition=args.partition,
        account=args.account, max_concurrent=args.max_concurrent, python=args.python, term_before_s=args.term_before,
    )
    for path in emit(sw, runs, sweep_dir, args.launcher, options):
        print(f"wrote {path}")
    if args.launcher == "slurm":
        print(f"submit with: sbatch {shlex.quote(str(sweep_dir / 'launch' / 'slurm.sh'))}; "
              f"then: mdiff sweep status {shlex.quote(str(sweep_dir))}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mdiff.sweeps.expand import SWEEPS_DIR, _import

    for name in available_sweeps():
        module = _import(SWEEPS_DIR / f"{name}.py")
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        sizes = []
        for variant in getattr(module, "VARIANTS", ()):
            try:
                sizes.append(f"{variant} ({len(module.get_sweep(variant).points)} points)")
            except Exception as e:  # a sweep whose dependencies have not landed still lists
                sizes.append(f"{variant} (unavailable: {e})")
        print(f"{name:10s} {doc}\n{'':10s} variants: {', '.join(sizes)}")
    return 0
