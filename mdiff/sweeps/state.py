"""What a sweep directory holds: sweep.json, each run's state, and results.csv (written atomically).

Layout (the sweep directory contract):
    DIR/sweep.json           the expanded grid (the definition a rerun must match)
    DIR/runs/<name>/         run directories (summary.json says complete / failed / preempted)
    DIR/logs/<name>.log      each run's stdout and stderr
    DIR/logs/<name>.pid      present while a runner process trains the point (the run's own lock,
                             runs/<name>/.lock, also marks it running, whoever started it)
    DIR/logs/<name>.failed.json   the last failure: exit code and the error's last lines
    DIR/results.csv          one row per run
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
from typing import Any

from mdiff.sweeps.define import SweepError
from mdiff.sweeps.expand import RunSpec
from mdiff.vocab import MODALITIES

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
METRIC_COLUMNS = ("params", "params_nonembedding", "params_total", "tokens", "tokens_processed", "flops", "flops_per_token", "loss", "loss_text", "loss_image", "loss_audio")
# The optimiser values a run actually used (summary.json `plan`, after the batch reparameterisation), and the
# configured starting values the batch analysis compares with its measurements (config.json optim.*).
PLAN_COLUMNS = ("kappa", "lr", "b1", "b2", "eps", "weight_decay", "steps", "warmup_steps", "warmup_tokens", "steps_critical",
                "seq_len")
CONFIGURED_COLUMNS = ("optim.gamma",)
# Run states, from the sweep's point of view.
COMPLETE, FAILED, RUNNING, PARTIAL, PENDING = "complete", "failed", "running", "partial", "pending"


def run_dir(sweep_dir: pathlib.Path, name: str) -> pathlib.Path:
    return sweep_dir / "runs" / name


def log_path(sweep_dir: pathlib.Path, name: str, suffix: str = ".log") -> pathlib.Path:
    return sweep_dir / "logs" / f"{name}{suffix}"


# ---------------------------------------------------------------------------------------------
# Atomic writes (a full disk or a kill never leaves half a file behind)
# ---------------------------------------------------------------------------------------------
def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SweepError(f"cannot write {str(path)!r}: {e.strerror or e}; nothing was replaced") from None


def check_writable(sweep_dir: pathlib.Path) -> None:
    """Create the directory tree and prove a file can be written there, before any run starts."""
    try:
        for sub in ("", "runs", "logs"):
            (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SweepError(f"output directory {str(sweep_dir)!r} is not writable: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# sweep.json
# ---------------------------------------------------------------------------------------------
DEFINITION_DEFAULTS = {"module": "mdiff", "common": {}}


def definition(sweep_name: str, config: str, runs: list[RunSpec], axes: list[str], common: dict) -> dict[str, Any]:
    return {
        "sweep": sweep_name,
        "config": config,
        "module": runs[0].module if runs else "mdiff",
        "command": list(runs[0].command) if runs else ["train"],
        "axes": axes,
        "common": common,
        "points": [{"name": r.name, "overrides": r.overrides} for r in runs],
    }


def read_sweep_file(sweep_dir: pathlib.Path) -> dict[str, Any] | None:
    from mdiff.rundir import read_json_or_raise

    return read_json_or_raise(sweep_dir / SWEEP_FILE, SweepError, "; remove it or pass --force")


def definition_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two sweep definitions (empty when they match)."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as in the file
    old = {**DEFINITION_DEFAULTS, **old}  # files written before a key existed hold its default
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in ("sweep", "config", "module", "command", "common") if old.get(k) != new.get(k)]
    old_points = {p["name"]: p["overrides"] for p in old.get("points", [])}
    new_points = {p["name"]: p["overrides"] for p in new.get("points", [])}
    if old_points != new_points:
        gone, added = sorted(set(old_points) - set(new_points)), sorted(set(new_points) - set(old_points))
        changed = sorted(k for k in set(old_points) & set(new_points) if old_points[k] != new_points[k])
        for label, names in (("points only in the directory", gone), ("new points", added), ("changed points", changed)):
            if names:
                diffs.append(f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    return diffs


# ---------------------------------------------------------------------------------------------
# Run state
# ---------------------------------------------------------------------------------------------
def read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped by its new parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def running_pid(sweep_dir: pathlib.Path, name: str) -> int | None:
    """The pid training this point right now (from another runner, perhaps), or None."""
    path = log_path(sweep_dir, name, ".pid")
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:  # a recycled pid belongs to some other program: its command line does not name this run
        if name not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return None
    except OSError:
        pass
    return pid


def run_state(sweep_dir: pathlib.Path, name: str) -> str:
    """complete, running (a runner's child or any trainer holding the run's lock), failed, partial or pending."""
    from mdiff.rundir import lock_holder

    summary = read_json(run_dir(sweep_dir, name) / "summary.json") or {}
    if summary.get("status") == COMPLETE:
        return COMPLETE
    if running_pid(sweep_dir, name) is not None or lock_holder(run_dir(sweep_dir, name)) is not None:
        return RUNNING
    if summary.get("status") == "failed" or log_path(sweep_dir, name, ".failed.json").exists():
        return FAILED
    rd = run_dir(sweep_dir, name)
    if rd.is_dir() and any(rd.iterdir()):
        return PARTIAL
    return PENDING


def last_record(path: pathlib.Path, tail_bytes: int = 8192) -> dict[str, Any] | None:
    """The last complete JSON line of a (possibly growing) JSONL file, reading only its tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def tail_lines(path: pathlib.Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-n:]


# ---------------------------------------------------------------------------------------------
# results.csv
# ---------------------------------------------------------------------------------------------
def _first(summary: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if summary.get(key) is not None:
            return summary[key]
    return None


def metrics_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The results.csv metric columns from a summary.json (final eval/ losses)."""
    row = {k: summary.get(k) for k in ("params", "params_nonembedding", "params_total", "tokens", "tokens_processed", "flops", "flops_per_token")}
    row["loss"] = _first(summary, "eval/loss", "loss")
    for m in MODALITIES:
        row[f"loss_{m}"] = _first(summary, f"eval/loss/{m}", f"eval/loss_{m}", f"loss/{m}")
    return row


def extra_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Numeric eval/ figures beyond the loss columns (the symmetry model's NLL, recovery errors ...)."""
    return {
        k: v for k, v in summary.items()
        if k.startswith("eval/") and not k.startswith(("eval/loss", "eval/bits"))
        and isinstance(v, (int, float)) and not isinstance(v, bool)
    }  # fmt: skip


def _config_value(config: dict[str, Any] | None, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def result_rows(sweep_dir: pathlib.Path, spec: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns: name, the swept axes, the contract's metric columns, status, then any extra eval/ figures.

    A point that does not set an axis (a chain's baseline) shows the value its run's config.json holds.
    """
    axes = list(spec.get("axes", []))
    rows, extras = [], {}
    for point in spec.get("points", []):
        name = point["name"]
        rd = run_dir(sweep_dir, name)
        summary = read_json(rd / "summary.json") or {}
        config = read_json(rd / "config.json")
        row = {"name": name}
        for a in axes:
            row[a] = _cell(point["overrides"][a] if a in point["overrides"] else _config_value(config, a))
        row.update(metrics_of(summary))
        row.update(optimiser_used(summary, config, skip=axes))
        row["status"] = run_state(sweep_dir, name)
        extra = extra_metrics(summary)
        extras.update(dict.fromkeys(extra))
        rows.append(row | extra)
    used = [c for c in (*PLAN_COLUMNS, *CONFIGURED_COLUMNS) if c not in axes]
    return ["name", *axes, *METRIC_COLUMNS, *used, "status", *extras], rows


def optimiser_used(summary: dict[str, Any], config: dict[str, Any] | None, *, skip: list[str]) -> dict[str, Any]:
    """PLAN_COLUMNS from the run's plan (what the optimiser used) and CONFIGURED_COLUMNS from its config.json."""
    plan = summary.get("plan") or {}
    row = {c: plan.get(c) for c in PLAN_COLUMNS}
    row |= {c: _config_value(config, c) for c in CONFIGURED_COLUMNS}
    return {k: v for k, v in row.items() if k not in skip}


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_results(sweep_dir: pathlib.Path) -> pathlib.Path:
    """(Re)write DIR/results.csv from sweep.json and the run directories, atomically."""
    spec = read_sweep_file(sweep_dir)
    if spec is None:
        raise SweepError(f"{str(sweep_dir)!r} holds no {SWEEP_FILE}: not a sweep directory")
    columns, rows = result_rows(sweep_dir, spec)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    path = sweep_dir / RESULTS_FILE
    write_atomic(path, buf.getvalue())
    return path
