"""Sweep machinery: combinators, names, validation, the runner (with a fake trainer), results.csv, emit."""

from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mdiff import sweeps as msweep
from mdiff.sweeps import Sweep, SweepError, chain, fixed, product, simplex, sweep, zipit
from mdiff.sweeps import state
from mdiff.sweeps.define import format_value, short_keys
from mdiff.sweeps.expand import REPO_ROOT

# A stand-in for `python -m mdiff train`: writes a run directory like the real loop (config.json,
# metrics.jsonl, summary.json last), sleeps FAKE_SLEEP seconds per "step", fails for seed=13, and logs
# every start in $FAKE_LOG so tests can count how often each point ran (and its CPUs in $FAKE_CPUS, if set).
FAKE_TRAIN = r'''
import json, os, pathlib, sys, time
args = sys.argv[1:]
assert args[0] == "train", args
workdir = pathlib.Path(args[args.index("--workdir") + 1])
overrides = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(workdir.name + "\n")
if os.environ.get("FAKE_CPUS"):  # the CPUs this child may run on, and when it ran
    with open(os.environ["FAKE_CPUS"], "a") as f:
        f.write(json.dumps({"cpus": sorted(os.sched_getaffinity(0)), "start": time.time(),
                            "end": time.time() + 4 * float(os.environ.get("FAKE_SLEEP", "0"))}) + "\n")
if overrides.get("seed") == "13":
    print("Traceback (most recent call last):\nValueError: seed 13 is unlucky", file=sys.stderr)
    sys.exit(1)
workdir.mkdir(parents=True, exist_ok=True)
if os.environ.get("FAKE_PREEMPT") and not (workdir / "preempted_once").exists():  # SIGTERM'd once, like a real run
    (workdir / "preempted_once").write_text("1")
    (workdir / "config.json").write_text(json.dumps(overrides))
    (workdir / "summary.json").write_text(json.dumps({"status": "preempted"}))
    sys.exit(75)
resumed = (workdir / "config.json").exists()
(workdir / "config.json").write_text(json.dumps(overrides))
tokens = int(float(overrides.get("train.tokens", 4096)))
start = 0
if (workdir / "metrics.jsonl").exists():
    start = len((workdir / "metrics.jsonl").read_text().splitlines())
for step in range(start, 4):
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "tokens": tokens * (step + 1) // 4}) + "\n")
width = int(overrides.get("model.width", 64))
loss = 2.0 + 100.0 / width + 1e4 / tokens
summary = {"status": "complete", "params": width * width * 12, "params_total": width * width * 12 + 1000,
           "tokens": tokens, "flops": 6.0 * width * width * 12 * tokens, "eval/loss": loss,
           "eval/loss/text": loss + 0.1, "eval/loss/image": loss + 0.2, "resumed": resumed}
tmp = workdir / ".summary.tmp"
tmp.write_text(json.dumps(summary))
os.replace(tmp, workdir / "summary.json")
'''

EXPERIMENT = '''
from mdiff.defaults import base_config
VARIANTS = ("tiny",)
def get_config(variant):
    c = base_config()
    c.model.width, c.model.heads, c.train.batch, c.train.tokens = 64, 4, 8, 4096
    return c
'''


@pytest.fixture
def env(tmp_path, monkeypatch):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "starts.txt"))
    monkeypatch.setenv("FAKE_SLEEP", "0")
    return tmp_path


def entry(tmp: pathlib.Path) -> list[str]:
    return [sys.executable, str(tmp / "fake_train.py")]


def tiny_sweep(tmp: pathlib.Path, widths=(32, 64), tokens=(4096, 8192), **kw) -> Sweep:
    s = Sweep(config=f"{tmp}/exp.py:tiny", points=product(sweep("model.width", widths), sweep("train.tokens", tokens)), **kw)
    s.name = "tiny"
    return s


def starts(tmp: pathlib.Path) -> list[str]:
    path = tmp / "starts.txt"
    return path.read_text().split() if path.exists() else []


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Combinators and names
# ---------------------------------------------------------------------------------------------
def test_combinators():
    a, b = sweep("x", [1, 2]), sweep("y", ["u", "v", "w"])
    assert product(a, b) == [{"x": 1, "y": "u"}, {"x": 1, "y": "v"}, {"x": 1, "y": "w"},
                             {"x": 2, "y": "u"}, {"x": 2, "y": "v"}, {"x": 2, "y": "w"}]  # fmt: skip
    assert zipit(a, sweep("y", [3, 4])) == [{"x": 1, "y": 3}, {"x": 2, "y": 4}]
    assert chain(a, fixed("y", 0)) == [{"x": 1}, {"x": 2}, {"y": 0}]
    assert product(fixed("z", 0.5), a) == [{"z": 0.5, "x": 1}, {"z": 0.5, "x": 2}]
    with pytest.raises(SweepError, match="both set"):
        product(a, a)
    with pytest.raises(SweepError, match="different lengths"):
        zipit(a, b)
    with pytest.raises(SweepError, match="no values"):
        sweep("x", [])


def test_simplex_grid():
    keys = ["data.mix.text", "data.mix.image", "data.mix.audio"]
    pts = simplex(keys, 5, min_parts=1)
    assert len(pts) == 6  # compositions of 5 into 3 positive parts: C(4, 2)
    assert all(abs(sum(p.values()) - 1) < 1e-9 and min(p.values()) >= 0.2 - 1e-9 for p in pts)
    assert len(simplex(keys, 4)) == 15  # C(6, 2) with zeros allowed
    with pytest.raises(SweepError):
        simplex(keys, 2, min_parts=1)


def test_numpy_values_become_python():
    np = pytest.importorskip("numpy")
    pts = sweep("optim.lr", np.array([1e-3, 2e-3]))
    assert all(type(p["optim.lr"]) is float for p in pts)


def test_names():
    assert short_keys(["model.size", "train.tokens"]) == {"model.size": "size", "train.tokens": "tokens"}
    assert short_keys(["data.mix.text", "diffusion.schedule.text"]) == {
        "data.mix.text": "mix.text", "diffusion.schedule.text": "schedule.text"}  # fmt: skip
    assert [format_value(v) for v in (2_000_000, 1500, 999, 0.25, 1e-3, True, "polynomial(2)", (2, 3), 3e6)] == [
        "2M", "1500", "999", "0.25", "0.001", "true", "polynomial-2", "2x3", "3M"]
    assert format_value(453321162752) == "453.3G" and format_value(88064) == "88.06k"  # fmt: skip


def test_expansion_names_and_overrides(env):
    runs = msweep.expand(tiny_sweep(env))
    assert [r.name for r in runs] == ["width-32_tokens-4096", "width-32_tokens-8192",
                                      "width-64_tokens-4096", "width-64_tokens-8192"]  # fmt: skip
    assert runs[0].overrides == {"model.width": 32, "train.tokens": 4096}
    assert runs[0].planned_tokens == 4096
    args = runs[0].args("/w", {"seed": 3})
    assert args == ["train", "--config", f"{env}/exp.py:tiny", "--workdir", "/w",
                    "--config.seed=3", "--config.model.width=32", "--config.train.tokens=4096"]  # fmt: skip


def test_invalid_points_rejected_with_reasons(env):
    bad = Sweep(
        config=f"{env}/exp.py:tiny",
        points=chain(sweep("model.width", [64, 30]), sweep("model.nonsense", [1]), sweep("train.batch", [6])),
        devices=4,
    )
    with pytest.raises(SweepError) as info:
        msweep.expand(bad)
    text = str(info.value)
    assert "3 of 4 points are invalid; nothing was run" in text
    assert "width-30" in text and "divisible by model.heads=4" in text
    assert "unknown config key 'model.nonsense'" in text
    assert "batch-6" in text and "must be divisible by data-parallel size 4" in text


def test_mesh_must_fit_devices(env):
    s = Sweep(config=f"{env}/exp.py:tiny", points=sweep("mesh.shape.fsdp", [2, 3]), devices=2)
    with pytest.raises(SweepError, match=r"fsdp-3: .*does not fit 2 devices"):
        msweep.expand(s)
    s = Sweep(config=f"{env}/exp.py:tiny", points=product(fixed("mesh.shape.data", 1), sweep("mesh.shape.tensor", [2, 3])), devices=2)
    with pytest.raises(SweepError, match=r"tensor-3: config.mesh.shape=.* needs 3 devices, have 2"):
        msweep.expand(s)


def test_anti_masking_pairs_must_split_over_devices(env):
    s = Sweep(config=f"{env}/exp.py:tiny", points=product(fixed("diffusion.anti_masking", True), sweep("train.batch", [8, 12])), devices=4)
    with pytest.raises(SweepError, match=r"(?s)1 of 2 points.*batch-12: .*data-parallel size 4 x .* x 2 \(anti-masking pairs\)"):
        msweep.expand(s)


def test_duplicate_names_rejected(env):
    s = Sweep(config=f"{env}/exp.py:tiny", points=sweep("optim.lr", [1e-3, 1.00000001e-3]))
    with pytest.raises(SweepError, match="both get the run name"):
        msweep.expand(s)


def test_unknown_sweep_and_variant():
    with pytest.raises(SweepError, match="shipped sweeps"):
        msweep.load_sweep("no_such_sweep:cpu")
    with pytest.raises(SweepError, match="unknown variant 'huge'"):
        msweep.load_sweep("scaling:huge")


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------
def test_runner_results_and_skip(env):
    out = env / "sw"
    s = tiny_sweep(env, common={"seed": 1})
    outcome = msweep.run_sweep(s, out, parallel=2, entry=entry(env), progress=None, poll_s=0.05)
    assert outcome.ok and sorted(outcome.complete) == sorted(r.name for r in msweep.expand(s))
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == ["name", "model.width", "train.tokens", "params", "params_nonembedding", "params_total", "tokens",
                             "tokens_processed", "flops", "flops_per_token", "loss", "loss_text", "loss_image", "loss_audio",
                             *state.PLAN_COLUMNS, *state.CONFIGURED_COLUMNS, "status"]  # fmt: skip
    assert {r["status"] for r in rows} == {"complete"}
    row = next(r for r in rows if r["name"] == "width-64_tokens-8192")
    assert float(row["loss"]) == pytest.approx(2.0 + 100 / 64 + 1e4 / 8192)
    assert float(row["loss_image"]) == pytest.approx(float(row["loss"]) + 0.2) and row["loss_audio"] == ""
    assert row["model.width"] == "64" and row["params"] == str(64 * 64 * 12)
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["axes"] == ["model.width", "train.tokens"] and len(spec["points"]) == 4
    # Rerun: nothing starts again.
    again = msweep.run_sweep(s, out, parallel=2, entry=entry(env), progress=None, poll_s=0.05)
    assert again.started == [] and len(again.skipped) == 4
    assert len(starts(env)) == 4


def cpu_records(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_concurrent_children_each_keep_to_their_own_cpus(env, monkeypatch):
    # The rule: with --parallel k, slot i's children may run on every k-th of the runner's CPUs from the i-th,
    # so two children running at once never share a CPU; MDIFF_CPU_SHARES=0 leaves every child all of them.
    mine = sorted(os.sched_getaffinity(0))
    shares = [mine[0::2], mine[1::2]]
    monkeypatch.setenv("FAKE_SLEEP", "0.2")
    monkeypatch.setenv("FAKE_CPUS", str(env / "cpus.jsonl"))
    msweep.run_sweep(tiny_sweep(env), env / "sw", parallel=2, entry=entry(env), progress=None, poll_s=0.02)
    records = cpu_records(env / "cpus.jsonl")
    assert len(records) == 4 and all(r["cpus"] in shares for r in records)
    overlapping = [(a, b) for i, a in enumerate(records) for b in records[i + 1:] if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping and all(a["cpus"] != b["cpus"] for a, b in overlapping)
    monkeypatch.setenv("FAKE_CPUS", str(env / "unconfined.jsonl"))  # the children's environment decides
    msweep.run_sweep(tiny_sweep(env), env / "sw2", parallel=2, entry=entry(env), progress=None, poll_s=0.02,
                     env={"MDIFF_CPU_SHARES": "0"})
    assert [r["cpus"] for r in cpu_records(env / "unconfined.jsonl")] == [mine] * 4


def test_cpu_shares_deal_the_cpus_over_the_jobs():
    from mdiff.runtime import cpu_shares

    on = {}
    assert cpu_shares(2, {0, 1}, on) == [{0}, {1}]
    assert cpu_shares(2, {0, 1, 2, 3, 4}, on) == [{0, 2, 4}, {1, 3}]
    assert cpu_shares(3, {4, 5, 6, 7}, on) == [{4, 7}, {5}, {6}]
    assert cpu_shares(1, {0, 1}, on) is None  # one job keeps every CPU
    assert cpu_shares(3, {0, 1}, on) is None  # fewer CPUs than jobs: not split
    assert cpu_shares(2, {0, 1}, {"MDIFF_CPU_SHARES": "0"}) is None


def test_failed_run_recorded_others_continue(env):
    out = env / "sw"
    s = Sweep(config=f"{env}/exp.py:tiny", points=sweep("seed", [1, 13, 2]))
    s.name = "seeds"
    outcome = msweep.run_sweep(s, out, parallel=1, entry=entry(env), progress=None, poll_s=0.05)
    assert outcome.failed == ["seed-13"] and sorted(outcome.complete) == ["seed-1", "seed-2"]
    record = json.loads((out / "logs" / "seed-13.failed.json").read_text())
    assert record["returncode"] == 1 and "seed 13 is unlucky" in record["error"][-1]
    assert {r["name"]: r["status"] for r in read_csv(out / "results.csv")}["seed-13"] == "failed"
    assert msweep.sweep_status(out) == {"complete": ["seed-1", "seed-2"], "failed": ["seed-13"]}


def test_other_sweep_directory_refused_unless_forced(env):
    out = env / "sw"
    msweep.run_sweep(tiny_sweep(env), out, entry=entry(env), progress=None, poll_s=0.05)
    before = (out / "sweep.json").read_text()
    other = tiny_sweep(env, widths=(32, 128))
    with pytest.raises(SweepError, match="holds another sweep definition.*new points: width-128"):
        msweep.run_sweep(other, out, entry=entry(env), progress=None)
    assert (out / "sweep.json").read_text() == before
    outcome = msweep.run_sweep(other, out, force=True, entry=entry(env), progress=None, poll_s=0.05)
    assert sorted(outcome.started) == ["width-128_tokens-4096", "width-128_tokens-8192"]
    assert len(read_csv(out / "results.csv")) == 4


def test_unwritable_output_is_a_clear_error(env):
    blocker = env / "a_file"
    blocker.write_text("x")
    with pytest.raises(SweepError, match="is not writable"):
        msweep.run_sweep(tiny_sweep(env), blocker / "sub", entry=entry(env), progress=None)
    with pytest.raises(SweepError, match="is a file"):
        msweep.run_sweep(tiny_sweep(env), blocker, entry=entry(env), progress=None)


def test_disk_full_leaves_results_csv_intact(env, monkeypatch):
    out = env / "sw"
    msweep.run_sweep(tiny_sweep(env), out, entry=entry(env), progress=None, poll_s=0.05)
    before = (out / "results.csv").read_text()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SweepError, match="No space left on device; nothing was replaced"):
        msweep.write_results(out)
    assert (out / "results.csv").read_text() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_error_mid_sweep_stops_the_running_points(env, monkeypatch):
    """A full disk while results.csv is rewritten: the error surfaces and no training process is left."""
    monkeypatch.setenv("FAKE_SLEEP", "0.3")
    s = Sweep(config=f"{env}/exp.py:tiny", points=sweep("model.width", [16, 32, 64]))
    s.name = "w"

    def full_disk(sweep_dir):
        raise SweepError("cannot write 'results.csv': No space left on device; nothing was replaced")

    monkeypatch.setattr(state, "write_results", full_disk)
    with pytest.raises(SweepError, match="No space left"):
        msweep.run_sweep(s, env / "sw", parallel=2, entry=entry(env), progress=None, poll_s=0.05)
    assert not list((env / "sw" / "logs").glob("*.pid"))  # every child was stopped and its pid file removed
    assert msweep.sweep_status(env / "sw").get("running") is None
    assert not (env / "sw" / "results.csv").exists()


RUNNER_SCRIPT = '''
import sys
from mdiff.sweeps import Sweep, product, sweep, run_sweep
s = Sweep(config="{tmp}/exp.py:tiny", points=product(sweep("model.width", [16, 32, 64]), sweep("train.tokens", [4096, 8192])))
s.name = "tiny"
run_sweep(s, "{tmp}/sw", parallel=2, entry=[sys.executable, "{tmp}/fake_train.py"], poll_s=0.05)
'''


def test_killed_runner_resumes_without_repeating(env):
    """SIGKILL the runner mid-sweep; its children die with it; a rerun repeats no complete run."""
    script = env / "runner.py"
    script.write_text(RUNNER_SCRIPT.format(tmp=env))
    proc_env = {**os.environ, "FAKE_SLEEP": "0.15", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=proc_env, stderr=subprocess.DEVNULL)
    runs = env / "sw" / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [p for p in runs.glob("*/summary.json")] if runs.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the children get SIGTERM from the kernel
    complete_before = {p.parent.name for p in runs.glob("*/summary.json")}
    assert 2 <= len(complete_before) < 6, complete_before
    status = msweep.sweep_status(env / "sw")
    assert "running" not in status, status  # orphans died with the runner
    subprocess.run([sys.executable, str(script)], env=proc_env, check=True, stderr=subprocess.DEVNULL)
    counts = {name: starts(env).count(name) for name in set(starts(env))}
    assert all(counts[name] == 1 for name in complete_before), counts
    assert all(n <= 2 for n in counts.values()) and len(counts) == 6
    rows = read_csv(env / "sw" / "results.csv")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"complete"}
    assert all(r["loss"] for r in rows)
    # Interrupted runs continued from where they were (their metrics were not restarted).
    resumed = [n for n, c in counts.items() if c == 2]
    for name in resumed:
        assert json.loads((runs / name / "summary.json").read_text())["resumed"] is True
        assert len((runs / name / "metrics.jsonl").read_text().splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# CLI and emit
# ---------------------------------------------------------------------------------------------
def test_emit_slurm_script(env):
    from mdiff.sweeps.emit import SlurmOptions

    s = tiny_sweep(env, hosts=2, devices=8)
    sw, runs, out = msweep.prepare(s, env / "pod")
    paths = msweep.emit(sw, runs, out, "slurm", SlurmOptions(gpus_per_node=4, partition="gpu", max_concurrent=2))
    script = (out / "launch" / "slurm.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --nodes=2" in script
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --partition=gpu" in script and "srun --ntasks-per-node=1" in script
    for i, r in enumerate(runs):
        assert f"  {i}) NAME={r.name}; CMD=(" in script
        assert f"--workdir {out}/runs/{r.name}" in script
    assert "--config.model.width=32 --config.train.tokens=4096" in script
    assert '"status": "complete"' in script  # complete points exit at once
    subprocess.run(["bash", "-n", str(paths[1])], check=True)  # valid shell
    commands = (out / "launch" / "commands.txt").read_text().splitlines()
    assert len(commands) == 4 and all(" -m mdiff train --config " in c for c in commands)


def test_emitted_array_task_runs_its_point(env):
    """Run array task 1 of the script with a fake srun and python: it executes point 1's command."""
    s = tiny_sweep(env)
    sw, runs, out = msweep.prepare(s, env / "pod")
    from mdiff.sweeps.emit import SlurmOptions

    msweep.emit(sw, runs, out, "slurm", SlurmOptions(python=str(env / "fakepy")))
    (env / "bin").mkdir()
    (env / "bin" / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (env / "fakepy").write_text(f'#!/bin/bash\nshift 2\nexec {sys.executable} {env}/fake_train.py "$@"\n')
    for p in (env / "bin" / "srun", env / "fakepy"):
        p.chmod(0o755)
    run_env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_NUM_NODES": "1", "PATH": f"{env}/bin:{os.environ['PATH']}"}
    subprocess.run(["bash", str(out / "launch" / "slurm.sh")], env=run_env, check=True, capture_output=True)
    assert starts(env) == [runs[1].name]
    again = subprocess.run(["bash", str(out / "launch" / "slurm.sh")], env=run_env, check=True, capture_output=True, text=True)
    assert "is complete; nothing to do" in again.stdout and starts(env) == [runs[1].name]


def test_cli(env, capsys, monkeypatch):
    from mdiff.cli import main

    sweep_file = env / "mysweep.py"
    sweep_file.write_text(textwrap.dedent(f'''
        from mdiff.sweeps import Sweep, sweep
        VARIANTS = ("a",)
        def get_sweep(variant):
            return Sweep(config="{env}/exp.py:tiny", points=sweep("model.width", [32, 64]))
    '''))
    monkeypatch.setattr("mdiff.sweeps.runner.DEFAULT_ENTRY", tuple(entry(env)))
    assert main(["sweep", "run", f"{sweep_file}:a", "--out", str(env / "o"), "--dry-run"]) == 0
    assert "2 points, all valid" in capsys.readouterr().out and not (env / "o").exists()
    assert main(["sweep", "run", f"{sweep_file}:a", "--out", str(env / "o")]) == 0
    assert main(["sweep", "status", str(env / "o")]) == 0
    out = capsys.readouterr().out
    assert "complete     2" in out
    assert main(["sweep", "run", f"{sweep_file}:b", "--out", str(env / "o")]) == 2
    assert "unknown variant 'b'" in capsys.readouterr().err
    assert main(["sweep", "emit", f"{sweep_file}:a", "--out", str(env / "o"), "--launcher", "list"]) == 0
    assert (env / "o" / "launch" / "commands.txt").exists()


# ---------------------------------------------------------------------------------------------
# Preemption (exit 75), the run lock, paths with spaces
# ---------------------------------------------------------------------------------------------
def test_runner_requeues_a_preempted_point(env, monkeypatch):
    monkeypatch.setenv("FAKE_PREEMPT", "1")
    s = tiny_sweep(env, widths=(32,), tokens=(4096, 8192))
    outcome = msweep.run_sweep(s, env / "sw", parallel=2, entry=entry(env), progress=None, poll_s=0.05)
    names = sorted(r.name for r in msweep.expand(s))
    assert outcome.ok and sorted(outcome.complete) == names and sorted(outcome.requeued) == names
    assert sorted(starts(env)) == sorted(names * 2)  # each ran twice: preempted, then resumed
    assert all(json.loads((env / "sw" / "runs" / n / "summary.json").read_text())["resumed"] for n in names)


HOLD_LOCK = """
import sys, time
from mdiff import rundir
rundir.acquire_workdir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_runner_leaves_a_point_whose_run_another_trainer_holds(env):
    s = tiny_sweep(env, widths=(32,), tokens=(4096, 8192))
    names = [r.name for r in msweep.expand(s)]
    held = env / "sw" / "runs" / names[0]
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        outcome = msweep.run_sweep(s, env / "sw", entry=entry(env), progress=None, poll_s=0.05)
        assert outcome.elsewhere == [names[0]] and outcome.complete == [names[1]] and not outcome.ok
        assert starts(env) == [names[1]]
        assert msweep.sweep_status(env / "sw") == {"running": [names[0]], "complete": [names[1]]}
    finally:
        proc.kill()
        proc.wait()
    assert msweep.sweep_status(env / "sw")[state.PARTIAL] == [names[0]]  # its stale lock file holds no one


def test_emit_with_spaces_and_requeue_on_preemption(env, capsys, monkeypatch):
    """A sweep directory with spaces: quoted #SBATCH --output and submit command; exit 75 requeues the task."""
    from mdiff.cli import main

    sweep_file = env / "my sweep.py"
    sweep_file.write_text(textwrap.dedent(f'''
        from mdiff.sweeps import Sweep, sweep
        VARIANTS = ("a",)
        def get_sweep(variant):
            return Sweep(config="{env}/exp.py:tiny", points=sweep("model.width", [32, 64]))
    '''))
    out = env / "my pod" / "o'brien"
    assert main(["sweep", "emit", f"{sweep_file}:a", "--out", str(out), "--python", str(env / "fakepy"), "--term-before", "120"]) == 0
    printed = capsys.readouterr().out
    submit = printed.split("submit with: ", 1)[1].split("; then: ")
    assert shlex.split(submit[0]) == ["sbatch", str(out / "launch" / "slurm.sh")]
    assert shlex.split(submit[1]) == ["mdiff", "sweep", "status", str(out)]
    script_path = out / "launch" / "slurm.sh"
    script = script_path.read_text()
    output_line = next(line for line in script.splitlines() if line.startswith("#SBATCH --output="))
    assert shlex.split(output_line[len("#SBATCH "):]) == [f"--output={out}/logs/%x-%A_%a.log"]
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=TERM@120" in script
    subprocess.run(["bash", "-n", str(script_path)], check=True)

    (env / "bin").mkdir()
    (env / "bin" / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (env / "bin" / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {shlex.quote(str(env / "scontrol.txt"))}\n')
    (env / "fakepy").write_text(f'#!/bin/bash\nshift 2\nexec {sys.executable} {env}/fake_train.py "$@"\n')
    for p in (env / "bin" / "srun", env / "bin" / "scontrol", env / "fakepy"):
        p.chmod(0o755)
    run_env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1",
               "PATH": f"{env}/bin:{os.environ['PATH']}", "FAKE_PREEMPT": "1"}
    first = subprocess.run(["bash", str(script_path)], env=run_env, capture_output=True, text=True)
    assert first.returncode == 75 and "requeueing 77_1" in first.stdout
    assert (env / "scontrol.txt").read_text() == "requeue 77_1\n"
    second = subprocess.run(["bash", str(script_path)], env=run_env, capture_output=True, text=True)
    assert second.returncode == 0 and (env / "scontrol.txt").read_text() == "requeue 77_1\n"
    assert json.loads((out / "runs" / "width-64" / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(
    "source, message",
    [
        ("VARIANTS = ('a',\n", r"file '.*broken.py' cannot be loaded: SyntaxError: .*broken.py line 1"),
        ("VARIANTS = ('a',)\n\ndef get_sweep(variant):\n    return 1 / 0\n",
         r"sweep '.*broken.py:a': get_sweep\('a'\) raised ZeroDivisionError: division by zero \(broken.py line 4\)"),
        ("VARIANTS = ('a',)\n\ndef get_sweep():\n    return None\n", r"get_sweep\('a'\) raised TypeError"),
    ],
)
def test_a_broken_sweep_file_is_one_line_exit_2_nothing_written(env, capsys, source, message):
    from mdiff.cli import main

    (env / "broken.py").write_text(source)
    for action in ("run", "emit"):
        assert main(["sweep", action, f"{env / 'broken.py'}:a", "--out", str(env / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(message, err), err
    assert not (env / "o").exists()
