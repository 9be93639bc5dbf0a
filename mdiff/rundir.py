"""The run directory contract (README.md, "Run directories"): config.json, metrics.jsonl, eval.jsonl, summary.json.

* JSON lines are appended by process 0 only, one complete line per `write()` call and flushed at once,
  so a killed run loses at most the record being written and never leaves a broken line behind.
  Readers still skip a torn last line (a machine crash can cut one) rather than fail.
* `summary.json` and `config.json` are written atomically: temp file in the same folder, fsync, rename.
* `prepare_workdir` decides, before anything is written, whether a run starts, continues or is refused,
  and takes the workdir's trainer lock (`LOCK_FILE`, an flock): one trainer per run directory. A lock
  left by a killed process is taken over with a message; `--overwrite` of a run another live process
  holds is refused; `lock_holder` tells readers and the sweep runner who holds it, without taking it.
* Exit statuses of `mdiff train` (`EXIT_STATUS`): 0 complete, 1 failed, 2 bad input, 75 preempted
  (stopped early by SIGTERM with a checkpoint saved; rerun the same command to resume).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import fcntl
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

from mdiff.errors import EXIT_FAILED, InputError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
STATUSES = ("complete", "failed", "preempted", "running")
LOCK_FILE = ".lock"  # held (flock) by the one trainer of this run directory
# The exit status of a trainer per final status; 75 is EX_TEMPFAIL (sysexits.h): "try again later".
EXIT_PREEMPTED = 75
EXIT_STATUS = {"complete": 0, "failed": EXIT_FAILED, "preempted": EXIT_PREEMPTED}

# Files an mdiff run writes; `--overwrite` only ever deletes a folder that holds config.json.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_DIR)


class StopRequest:
    """SIGTERM as a flag a training loop polls (context manager; the previous handler comes back on exit):
    the loop saves a checkpoint, records status `preempted` and its command exits EXIT_PREEMPTED."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class WorkdirError(InputError):
    """A workdir that cannot be used as asked (different config, not a run directory, unwritable)."""


def process_index() -> int:
    """This host's index, without importing JAX when it is not in use yet."""
    if "jax" in sys.modules:
        import jax

        return jax.process_index()
    return int(os.environ.get("MDIFF_PROCESS_INDEX", "0"))


def _jsonable(value: Any) -> Any:
    """Numbers from numpy/jax become plain floats/ints; non-finite floats become null (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "f") in "iu":
        return int(value)
    return number if math.isfinite(number) else None


def dumps_line(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), sort_keys=False, allow_nan=False) + "\n"


class JsonlWriter:
    """Appends one JSON object per line; only process 0 writes (others hold a disabled writer)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        enabled: bool | None = None,
        keep_until_step: int | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
    ):
        self.path = pathlib.Path(path)
        self.enabled = process_index() == 0 if enabled is None else enabled
        self._file = None
        self._events = None
        if not self.enabled:
            return
        if tensorboard_dir is not None:  # mirror numeric fields as TensorBoard scalars
            from mdiff.tensorboard import ScalarEventWriter

            self._events = ScalarEventWriter(tensorboard_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None:
            truncate_after_step(self.path, keep_until_step)
        # Unbuffered binary handle: each record reaches the OS in one write() call.
        self._file = open(self.path, "ab", buffering=0)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(dumps_line(record).encode())
        if self._events is not None and "step" in record:
            self._events.write(record["step"], {k: v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


MetricsWriter = JsonlWriter


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records; a torn final line (crash mid-write) is skipped with a warning."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the last line without its newline: cut by a crash
                warnings.warn(f"{path}: skipping a torn last line ({len(line)} bytes)")
                return
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None


def truncate_after_step(path: str | os.PathLike, step: int) -> None:
    """Keep records with `step <= step` (a resumed run re-logs the steps after its checkpoint)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    kept = [r for r in iter_jsonl(path) if r.get("step", -1) <= step]
    write_text_atomic(path, "".join(dumps_line(r) for r in kept))


# ---------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------
def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_summary(workdir: str | os.PathLike, summary: dict[str, Any]) -> pathlib.Path | None:
    """Write summary.json atomically (process 0 only). `status` must be one of STATUSES."""
    status = summary.get("status")
    if status not in STATUSES:
        raise ValueError(f"summary status {status!r}: allowed {STATUSES}")
    if process_index() != 0:
        return None
    return write_json_atomic(pathlib.Path(workdir) / SUMMARY_FILE, summary)


def read_json_or_raise(path: pathlib.Path, error: type[InputError] | None = None, hint: str = "") -> Any:
    """The one "read JSON or raise" rule: the JSON in `path`, None when there is no file, and a broken
    file raises `error` (default WorkdirError) naming it, plus `hint` (what to do)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise (error or WorkdirError)(f"{path} is not valid JSON ({e}){hint}") from None


def read_summary(workdir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json_or_raise(pathlib.Path(workdir) / SUMMARY_FILE)


def config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    from mdiff.config import to_dict

    return to_dict(config)


def write_config(workdir: str | os.PathLike, config: Any) -> pathlib.Path | None:
    if process_index() != 0:
        return None
    return write_json_atomic(pathlib.Path(workdir) / CONFIG_FILE, config_dict(config))


def read_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json_or_raise(pathlib.Path(workdir) / CONFIG_FILE, hint="; use --overwrite to start afresh")


# ---------------------------------------------------------------------------------------------
# Deciding what to do with a workdir
# ---------------------------------------------------------------------------------------------
# Keys that may differ between a run and its continuation without making it another run.
VOLATILE_KEYS = ("train.progress",)


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": v} for a nested {"a": {"b": v}}: dotted config keys."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_dict(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten_dict(old), flatten_dict(new)
    keys = sorted((set(a) | set(b)) - set(VOLATILE_KEYS))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def prepare_workdir(
    workdir: str | os.PathLike, config: Any, *, resume: bool = False, overwrite: bool = False
) -> str:
    """Check the workdir, take its trainer lock, and return "new" or "resume".

    * missing or empty: a new run.
    * a run of the same config: continue it (resume from its checkpoints).
    * a run of a different config: refused, unless `resume` (continue with the new config; the train
      loop checks the model shape against the checkpoint) or `overwrite` (delete the old run).
    * a non-empty folder that is not an mdiff run: refused, even with `overwrite`.
    * a run another live process trains: refused (WorkdirBusy), with or without `overwrite`.

    Every refusal comes before anything is written. The lock is held until `release_workdir` or the end
    of the process; only process 0 of a multi-host job takes it (and deletes for `overwrite`).
    """
    if resume and overwrite:
        raise WorkdirError("--resume and --overwrite contradict each other; pass one")
    path = pathlib.Path(workdir)
    decision = _decide(path, config, resume=resume, overwrite=overwrite)  # refusals first, writing nothing
    if launcher_rank() != 0:
        return "new" if decision == "overwrite" else decision
    newly = acquire_workdir(path, overwrite=overwrite)
    try:
        decision = _decide(path, config, resume=resume, overwrite=overwrite)  # again, under the lock
        if decision == "overwrite":
            _clear_run(path)
            return "new"
        return decision
    except BaseException:
        if newly:
            release_workdir(path)
        raise


def _run_entries(path: pathlib.Path) -> list[pathlib.Path]:
    """What a run left in `path`: not the lock, and not an empty folder (a trainer killed while starting
    leaves an empty checkpoints/ before its config.json; that directory holds no run yet)."""
    return [p for p in path.iterdir()
            if p.name != LOCK_FILE and not (p.is_dir() and not any(p.iterdir()))]


def _decide(path: pathlib.Path, config: Any, *, resume: bool, overwrite: bool) -> str:
    """"new", "resume" or "overwrite" for this workdir, or a WorkdirError; reads only."""
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {str(path)!r} is a file, not a directory")
    if not path.exists() or not _run_entries(path):
        _check_writable(path)
        return "new"
    old = read_config(path) if (path / CONFIG_FILE).exists() else None
    if old is None:
        raise WorkdirError(
            f"workdir {str(path)!r} is not empty and holds no {CONFIG_FILE}: not an mdiff run; "
            "choose an empty or new directory"
        )
    diffs = config_differences(old, config_dict(config))
    if overwrite:
        _check_writable(path)
        return "overwrite"
    if diffs and not resume:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise WorkdirError(
            f"workdir {str(path)!r} holds a run with a different config ({shown}); "
            "pass --resume to continue it with the new config or --overwrite to start afresh"
        )
    _check_writable(path)
    return "resume"


def _clear_run(path: pathlib.Path) -> None:
    """Delete the old run (everything but the lock this process holds)."""
    for entry in _run_entries(path):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_writable(path: pathlib.Path) -> None:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), pathlib.Path("/"))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {str(path)!r}: no permission to write in {str(probe)!r}")


# ---------------------------------------------------------------------------------------------
# One trainer per run directory: an flock on WORKDIR/.lock
# ---------------------------------------------------------------------------------------------
class WorkdirBusy(WorkdirError):
    """Another live process trains in this workdir."""


@dataclasses.dataclass
class _HeldLock:
    fd: int
    created: pathlib.Path | None  # the top-most directory this lock had to create (removed if left empty)
    owner: int  # the pid that took it: a forked child never releases its parent's lock


_HELD: dict[pathlib.Path, _HeldLock] = {}
_BUSY_WAIT_S = 2.0  # a reader's probe (lock_holder) holds a shared lock for microseconds; do not mistake it


def launcher_rank() -> int:
    """This process's rank in a multi-host job, from the launcher's environment (readable before JAX starts)."""
    env = os.environ
    if env.get("MDIFF_COORDINATOR"):
        return int(env.get("MDIFF_PROCESS_ID", "0") or 0)
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        return int(env.get("SLURM_PROCID", "0") or 0)
    for key in ("MDIFF_PROCESS_INDEX", "TPU_WORKER_ID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {"pid": "?"}


def _describe(holder: dict[str, Any]) -> str:
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')})"


def lock_holder(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Who trains in `workdir` now ({"pid", "host", "since", "command"}), or None. Takes no lock, writes nothing."""
    try:
        fd = os.open(pathlib.Path(workdir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire_workdir(workdir: str | os.PathLike, *, overwrite: bool = False) -> bool:
    """Take the trainer lock of `workdir` (creating the folder); True if newly taken, False if already ours.

    A lock file left by a killed process (the kernel dropped its flock) is taken over with a message on
    stderr; a live holder raises WorkdirBusy.
    """
    path = pathlib.Path(workdir).absolute()
    if path in _HELD:
        return False
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    deadline = time.monotonic() + _BUSY_WAIT_S
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            action = "--overwrite refused" if overwrite else "not started"
            raise WorkdirBusy(
                f"workdir {str(workdir)!r} is being trained by {_describe(holder)}: {action}; "
                "wait for it to finish or stop it (SIGTERM checkpoints it)"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: take the new one
    previous = _read_holder(fd)
    if previous:
        print(
            f"mdiff: workdir {str(workdir)!r}: taking over the lock left by {_describe(previous)}, "
            "which is no longer running",
            file=sys.stderr,
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    _HELD[path] = _HeldLock(fd, created, os.getpid())
    return True


def release_workdir(workdir: str | os.PathLike) -> None:
    """Drop this process's lock on `workdir` (removing the lock file, and the folder if it made it and it is empty)."""
    path = pathlib.Path(workdir).absolute()
    held = _HELD.pop(path, None)
    if held is None or held.owner != os.getpid():
        return
    (path / LOCK_FILE).unlink(missing_ok=True)  # still locked: no other process can hold this inode
    os.close(held.fd)
    if held.created is not None:
        for folder in [path, *path.parents]:
            try:
                folder.rmdir()  # only empty folders go
            except OSError:
                break
            if folder == held.created:
                break


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        release_workdir(path)
