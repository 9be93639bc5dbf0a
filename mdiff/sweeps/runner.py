"""Run a sweep locally: every point in its own `python -m mdiff train` process, N at a time, resumable.

* Complete runs (summary.json status complete) are skipped; partial ones continue from their checkpoints
  (`mdiff train` resumes a workdir that holds the same config).
* A failed run is recorded (logs/<name>.failed.json: exit code and the error's last lines) and the others go on.
* A run that exits 75 (`rundir.EXIT_PREEMPTED`: stopped early by SIGTERM, checkpoint saved) is requeued
  and resumes, up to MAX_REQUEUES times per call.
* A point whose run directory is locked by a live trainer (`rundir.lock_holder`) is left to it.
* If the runner dies, its children get SIGTERM (Linux parent-death signal), so a rerun never races an
  orphan; a pid file per running point stops two runners from training the same point at once.
* results.csv is rewritten atomically whenever a run finishes.
* Same-shape points of a one-device sweep train packed (mdiff.train.packed), dealt over the N slots: with
  --parallel 2, eight such points are two packed jobs of four. Each slot owns its share of the CPUs
  (`runtime.cpu_shares`), which its children are confined to, so concurrent XLA:CPU trainers do not
  oversubscribe the cores.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from mdiff import runtime
from mdiff.rundir import EXIT_PREEMPTED
from mdiff.sweeps import state
from mdiff.sweeps.define import Sweep, SweepError, override_args
from mdiff.sweeps.expand import REPO_ROOT, RunSpec, expand, load_sweep

DEFAULT_ENTRY: tuple[str, ...] | None = None  # None: `python -m <the sweep's module>`; tests substitute a fake
MAX_REQUEUES = 3  # preempted (exit 75) restarts of one point per run_sweep call


@dataclasses.dataclass
class Outcome:
    """What a call to run_sweep did and where things stand."""

    sweep_dir: pathlib.Path
    complete: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # already complete before this call
    elsewhere: list[str] = dataclasses.field(default_factory=list)  # being trained by another runner
    started: list[str] = dataclasses.field(default_factory=list)
    requeued: list[str] = dataclasses.field(default_factory=list)  # preempted (exit 75) and started again
    partial: list[str] = dataclasses.field(default_factory=list)  # preempted more than MAX_REQUEUES times
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and not self.elsewhere and not self.partial


# ---------------------------------------------------------------------------------------------
# Preparing the directory
# ---------------------------------------------------------------------------------------------
def prepare(sweep: Sweep | str, out: str | os.PathLike, *, force: bool = False) -> tuple[Sweep, list[RunSpec], pathlib.Path]:
    """Load and validate every point, then claim the directory (sweep.json) for this sweep."""
    sweep = load_sweep(sweep) if isinstance(sweep, str) else sweep
    runs = expand(sweep)
    sweep_dir = pathlib.Path(out).resolve()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SweepError(f"output {str(sweep_dir)!r} is a file, not a directory")
    new = state.definition(sweep.name, sweep.config, runs, sweep.axes(), sweep.common)
    old = state.read_sweep_file(sweep_dir) if sweep_dir.is_dir() else None
    if old is not None and not force:
        diffs = state.definition_differences(old, new)
        if diffs:
            raise SweepError(
                f"{str(sweep_dir)!r} holds another sweep definition ({'; '.join(diffs[:3])}); "
                "choose another --out, or pass --force to adopt the directory for this definition"
            )
    state.check_writable(sweep_dir)
    state.write_atomic(sweep_dir / state.SWEEP_FILE, _dumps(new))
    return sweep, runs, sweep_dir


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"


def plan(sweep_dir: pathlib.Path, runs: Sequence[RunSpec]) -> list[tuple[RunSpec, str]]:
    """(run, state) for each point: complete, running, failed, partial or pending."""
    return [(r, state.run_state(sweep_dir, r.name)) for r in runs]


def command_line(run: RunSpec, sweep_dir: pathlib.Path, common: dict, entry: Sequence[str] | None = None) -> list[str]:
    prefix = entry or DEFAULT_ENTRY or (sys.executable, "-m", run.module)
    return [*prefix, *run.args(state.run_dir(sweep_dir, run.name), common)]


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------
def _child_setup(cpus: frozenset[int] | None) -> None:
    """In the child, before it runs anything: die with the runner, and keep to the slot's CPUs."""
    _die_with_parent()
    runtime.confine(cpus)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the runner dies (Linux); elsewhere, nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclasses.dataclass
class _Active:
    run: RunSpec
    proc: subprocess.Popen
    log: TextIO
    started: float
    members: list[RunSpec] = dataclasses.field(default_factory=list)  # a packed job's points (else [run])
    slot: int = 0  # which of the --parallel slots (and CPU shares) the job holds

    @property
    def points(self) -> list[RunSpec]:
        return self.members or [self.run]


def _start_packed(group: list[RunSpec], sweep_dir: pathlib.Path, common: dict, env: dict[str, str],
                  cpus: frozenset[int] | None = None) -> _Active:
    """One `python -m mdiff.train.packed` process for same-shape points (mdiff.train.packed); its log is
    the first point's, and every point's pid file names it."""
    import json

    spec = [{"config": r.config, "workdir": str(state.run_dir(sweep_dir, r.name)),
             "overrides": override_args({**common, **r.overrides})} for r in group]
    spec_path = state.log_path(sweep_dir, group[0].name, ".pack.json")
    state.write_atomic(spec_path, json.dumps(spec, indent=1) + "\n")
    lead = dataclasses.replace(group[0], module="mdiff.train.packed", command=())
    active = _start(lead, sweep_dir, common, None, env, argv=[sys.executable, "-m", "mdiff.train.packed", str(spec_path)],
                    cpus=cpus)
    for r in group[1:]:
        with open(state.log_path(sweep_dir, r.name), "a") as log:
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} packed with {group[0].name}: see {state.log_path(sweep_dir, group[0].name)}\n")
        state.write_atomic(state.log_path(sweep_dir, r.name, ".pid"), f"{active.proc.pid}\n")
    active.members = group
    return active


def pack_groups(sweep: Sweep, runs: list[RunSpec], entry: Sequence[str] | None, parts: int = 1) -> list[list[RunSpec]]:
    """`runs` as jobs: same-shape `mdiff train` points of a one-device sweep together (mdiff.train.packed),
    each such group dealt into up to `parts` jobs (point i to job i mod parts), every other point alone.
    Order follows `runs`."""
    if entry or sweep.devices != 1 or sweep.hosts != 1:
        return [[r] for r in runs]
    from mdiff.config import load_config
    from mdiff.train.packed import pack_key

    groups: dict[str, list[RunSpec]] = {}
    for r in runs:
        trains = r.module == "mdiff" and tuple(r.command) == ("train",)
        key = pack_key(load_config(r.config, override_args({**sweep.common, **r.overrides}))) if trains else r.name
        groups.setdefault(key, []).append(r)
    return [g[i::parts] for g in groups.values() for i in range(min(parts, len(g)))]


def _start(run: RunSpec, sweep_dir: pathlib.Path, common: dict, entry: Sequence[str] | None, env: dict[str, str],
           argv: list[str] | None = None, cpus: frozenset[int] | None = None) -> _Active:
    argv = argv or command_line(run, sweep_dir, common, entry)
    try:
        log = open(state.log_path(sweep_dir, run.name), "a")
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
    except OSError as e:
        raise SweepError(f"cannot write the log of {run.name} in {sweep_dir / 'logs'}: {e.strerror or e}") from None
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
        preexec_fn=functools.partial(_child_setup, cpus) if sys.platform.startswith("linux") else None,
    )
    state.write_atomic(state.log_path(sweep_dir, run.name, ".pid"), f"{proc.pid}\n")
    return _Active(run, proc, log, time.monotonic())


def _finish(active: _Active, sweep_dir: pathlib.Path, run: RunSpec | None = None) -> str:
    """Record how a child ended for `run` (default: its only point); return complete, failed or partial."""
    active.log.close()
    name, rc = (run or active.run).name, active.proc.returncode
    state.log_path(sweep_dir, name, ".pid").unlink(missing_ok=True)
    summary = state.read_json(state.run_dir(sweep_dir, name) / "summary.json") or {}
    failed_file = state.log_path(sweep_dir, name, ".failed.json")
    if summary.get("status") == state.COMPLETE:
        failed_file.unlink(missing_ok=True)
        return state.COMPLETE
    if rc == EXIT_PREEMPTED and summary.get("status") == "preempted":
        return state.PARTIAL
    record = {
        "status": "failed",
        "returncode": rc,
        "seconds": round(time.monotonic() - active.started, 1),
        "log": str(state.log_path(sweep_dir, active.run.name)),
        "error": state.tail_lines(state.log_path(sweep_dir, active.run.name), 20),
    }
    state.write_atomic(failed_file, _dumps(record))
    return state.FAILED


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def run_sweep(
    sweep: Sweep | str,
    out: str | os.PathLike,
    *,
    parallel: int = 1,
    force: bool = False,
    entry: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    progress: "Progress | None" = None,
    poll_s: float = 0.5,
    on_finish: Callable[[str, str], None] | None = None,
) -> Outcome:
    """Run every point that is not complete, `parallel` at a time; results.csv is kept up to date."""
    if parallel < 1:
        raise SweepError(f"--parallel {parallel}: must be >= 1")
    sweep, runs, sweep_dir = prepare(sweep, out, force=force)
    entry = tuple(entry or DEFAULT_ENTRY or ()) or None
    outcome = Outcome(sweep_dir)
    todo: list[RunSpec] = []
    for run, st in plan(sweep_dir, runs):
        if st == state.COMPLETE:
            outcome.skipped.append(run.name)
        elif st == state.RUNNING:
            outcome.elsewhere.append(run.name)
        else:
            todo.append(run)
    child_env = {**os.environ, "MDIFF_PROGRESS": "0", **(env or {})}
    progress = progress or Progress(sweep.name, runs, sweep_dir, stream=sys.stderr)
    active: list[_Active] = []
    packs = {r.name: g for g in pack_groups(sweep, todo, entry, parts=parallel) if len(g) > 1 for r in g}
    shares = runtime.cpu_shares(parallel, environ=child_env)  # the children's MDIFF_CPU_SHARES decides
    if packs:
        jobs = len({id(g) for g in packs.values()})
        progress.event(f"packing {len(packs)} same-shape points into {jobs} job(s): one process and one compiled program each")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        while todo or active:
            while todo and len(active) < parallel:
                run = todo.pop(0)
                if state.run_state(sweep_dir, run.name) == state.RUNNING:  # taken by another trainer meanwhile
                    outcome.elsewhere.append(run.name)
                    continue
                slot = min(set(range(parallel)) - {a.slot for a in active})
                cpus = shares[slot] if shares else None
                group = [r for r in packs.get(run.name, []) if r is run or r in todo]
                if len(group) > 1:
                    for r in group[1:]:
                        todo.remove(r)
                    job = _start_packed(group, sweep_dir, sweep.common, child_env, cpus)
                    outcome.started.extend(r.name for r in group)
                    progress.event(f"start {', '.join(r.name for r in group)} (packed)")
                else:
                    job = _start(run, sweep_dir, sweep.common, entry, child_env, cpus=cpus)
                    outcome.started.append(run.name)
                    progress.event(f"start {run.name}")
                job.slot = slot
                active.append(job)
            time.sleep(poll_s)
            for a, run in [(a, run) for a in active if a.proc.poll() is not None for run in a.points]:
                if a in active:
                    active.remove(a)
                result = _finish(a, sweep_dir, run)
                {state.COMPLETE: outcome.complete, state.FAILED: outcome.failed}.get(result, []).append(run.name)
                progress.event(f"{result} {run.name} ({time.monotonic() - a.started:.0f}s)")
                if result == state.PARTIAL:  # preempted with a checkpoint: resume it
                    if outcome.requeued.count(run.name) < MAX_REQUEUES:
                        outcome.requeued.append(run.name)
                        todo.append(run)
                        progress.event(f"requeue {run.name} (preempted, exit {EXIT_PREEMPTED})")
                    else:
                        outcome.partial.append(run.name)
                state.write_results(sweep_dir)
                if on_finish:
                    on_finish(run.name, result)
            progress.tick()
    except KeyboardInterrupt:
        outcome.interrupted = True
        _stop(active, sweep_dir)
        progress.event("interrupted: running points stopped; rerun the same command to continue")
    except BaseException:  # a full disk, a bug: leave no orphans behind
        _stop(active, sweep_dir)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    state.write_results(sweep_dir)
    progress.done(outcome)
    return outcome


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(active: list[_Active], sweep_dir: pathlib.Path, grace_s: float = 30.0) -> None:
    """SIGTERM the children (the train loop checkpoints on it), then SIGKILL stragglers."""
    for a in active:
        if a.proc.poll() is None:
            a.proc.terminate()
    deadline = time.monotonic() + grace_s
    for a in active:
        try:
            a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            a.proc.kill()
            a.proc.wait()
        a.log.close()
        for run in a.points:
            state.log_path(sweep_dir, run.name, ".pid").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Progress display
# ---------------------------------------------------------------------------------------------
class Progress:
    """One overall line: points done/running/failed, tokens trained over tokens planned, elapsed time.

    On a terminal the line redraws in place; otherwise events print as lines, with a heartbeat.
    """

    def __init__(self, name: str, runs: Sequence[RunSpec], sweep_dir: pathlib.Path, *, stream: TextIO | None,
                 heartbeat_s: float = 30.0):
        self.name, self.runs, self.sweep_dir, self.stream = name, list(runs), sweep_dir, stream
        self.tty = bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
        self.start = time.monotonic()
        self.heartbeat_s, self.last_print = heartbeat_s, 0.0

    def line(self) -> str:
        counts: dict[str, int] = {}
        done_tokens = planned = 0
        for run in self.runs:
            st = state.run_state(self.sweep_dir, run.name)
            counts[st] = counts.get(st, 0) + 1
            planned += run.planned_tokens
            if st == state.COMPLETE:
                done_tokens += run.planned_tokens
            elif st in (state.RUNNING, state.PARTIAL):
                last = state.last_record(state.run_dir(self.sweep_dir, run.name) / "metrics.jsonl") or {}
                done_tokens += min(int(last.get("tokens", 0) or 0), run.planned_tokens)
        elapsed = time.monotonic() - self.start
        frac = f" | tokens {100 * done_tokens / planned:5.1f}%" if planned else ""
        parts = ", ".join(f"{counts[k]} {k}" for k in (state.COMPLETE, state.RUNNING, state.FAILED, state.PARTIAL, state.PENDING) if counts.get(k))
        return f"[{self.name}] {len(self.runs)} points: {parts}{frac} | {_clock(elapsed)}"

    def _write(self, text: str, *, newline: bool) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last_print = time.monotonic()

    def event(self, text: str) -> None:
        if self.tty:
            self._write(f"{_clock(time.monotonic() - self.start)} {text}", newline=True)
            self._write(self.line(), newline=False)
        else:
            self._write(f"{_clock(time.monotonic() - self.start)} {text} -- {self.line()}", newline=True)

    def tick(self) -> None:
        if self.tty and time.monotonic() - self.last_print > 1.0:
            self._write(self.line(), newline=False)
        elif not self.tty and time.monotonic() - self.last_print > self.heartbeat_s:
            self._write(self.line(), newline=True)

    def done(self, outcome: Outcome) -> None:
        self._write(self.line(), newline=True)
        for name in outcome.failed:
            record = state.read_json(state.log_path(self.sweep_dir, name, ".failed.json")) or {}
            last = (record.get("error") or ["(no output)"])[-1]
            self._write(f"  failed: {name} (exit {record.get('returncode')}): {last}", newline=True)
        for name in outcome.elsewhere:
            self._write(f"  {name} is being trained by another process; not started here", newline=True)
        for name in outcome.partial:
            self._write(f"  {name} was preempted {MAX_REQUEUES + 1} times; rerun to resume it", newline=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"
