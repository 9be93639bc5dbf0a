"""The run directory contract (DESIGN.md): config.json, metrics.jsonl, eval.jsonl, summary.json.

* JSON lines are appended by process 0 only, one complete line per `write()` call and flushed at once,
  so a killed run loses at most the record being written and never leaves a broken line behind.
  Readers still skip a torn last line (a machine crash can cut one) rather than fail.
* `summary.json` and `config.json` are written atomically: temp file in the same folder, fsync, rename.
* `prepare_workdir` decides, before anything is written, whether a run starts, continues or is refused.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
STATUSES = ("complete", "failed", "preempted", "running")

# Files an mdiff run writes; `--overwrite` only ever deletes a folder that holds config.json.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_DIR)


class WorkdirError(ValueError):
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


def read_summary(workdir: str | os.PathLike) -> dict[str, Any] | None:
    path = pathlib.Path(workdir) / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e})") from None


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
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); use --overwrite to start afresh") from None


# ---------------------------------------------------------------------------------------------
# Deciding what to do with a workdir
# ---------------------------------------------------------------------------------------------
# Keys that may differ between a run and its continuation without making it another run.
VOLATILE_KEYS = ("train.progress",)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    keys = sorted((set(a) | set(b)) - set(VOLATILE_KEYS))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def prepare_workdir(
    workdir: str | os.PathLike, config: Any, *, resume: bool = False, overwrite: bool = False
) -> str:
    """Check the workdir before anything is written; return "new" or "resume".

    * missing or empty: a new run.
    * a run of the same config: continue it (resume from its checkpoints).
    * a run of a different config: refused, unless `resume` (continue with the new config; the train
      loop checks the model shape against the checkpoint) or `overwrite` (delete the old run).
    * a non-empty folder that is not an mdiff run: refused, even with `overwrite`.
    """
    if resume and overwrite:
        raise WorkdirError("--resume and --overwrite contradict each other; pass one")
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {str(path)!r} is a file, not a directory")
    if not path.exists() or not any(path.iterdir()):
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
        shutil.rmtree(path)
        return "new"
    if diffs and not resume:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise WorkdirError(
            f"workdir {str(path)!r} holds a run with a different config ({shown}); "
            "pass --resume to continue it with the new config or --overwrite to start afresh"
        )
    _check_writable(path)
    return "resume"


def _check_writable(path: pathlib.Path) -> None:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), pathlib.Path("/"))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {str(path)!r}: no permission to write in {str(probe)!r}")
