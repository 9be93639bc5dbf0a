"""Packed training of same-shape sweep points: each point's records equal the point trained alone."""

import json
import pathlib

import pytest

from helpers import run_python
from mdiff import rundir
from mdiff.config import ConfigError, load_config
from mdiff.train import packed

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "experiments/quickstart.py:test")

# One device, as packing requires: trains three points (each its own seed and optimiser values: peak lr, and
# b2, eps, weight decay or warm-up) packed and each alone, and reports both runs' records.
PACKED_VS_ALONE = """
import json, pathlib, sys
from mdiff import rundir
from mdiff.config import load_config
from mdiff.train import packed
from mdiff.train.loop import train_and_evaluate

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else {out!r})
LRS = (3e-3, 6e-3, 1.5e-3)
OTHER = ([], ["--config.optim.b2=0.95", "--config.optim.eps=1e-6"], ["--config.optim.weight_decay=0.3", "--config.optim.warmup=0.4"])
configs = [load_config({config!r}, [f"--config.seed={{s}}", f"--config.name=p{{s}}", f"--config.optim.lr={{LRS[s]}}", *OTHER[s]])
           for s in (0, 1, 2)]
summaries = packed.train_packed(configs, [out / f"packed{{i}}" for i in range(3)])
for i, c in enumerate(configs):
    train_and_evaluate(c, out / f"alone{{i}}")
def records(d, f):
    return rundir.read_jsonl(out / d / f)
print(json.dumps({{
    "statuses": [s["status"] for s in summaries],
    "packed_counts": [rundir.read_summary(out / f"packed{{i}}")["packed"] for i in range(3)],
    "seeds": [json.loads((out / f"packed{{i}}" / rundir.CONFIG_FILE).read_text())["seed"] for i in range(3)],
    "lrs": [json.loads((out / f"packed{{i}}" / rundir.CONFIG_FILE).read_text())["optim"]["lr"] for i in range(3)],
    "metrics": {{d: records(d, rundir.METRICS_FILE) for d in [f"{{k}}{{i}}" for k in ("packed", "alone") for i in range(3)]}},
    "evals": {{d: records(d, rundir.EVAL_FILE) for d in [f"{{k}}{{i}}" for k in ("packed", "alone") for i in range(3)]}},
}}))
"""


@pytest.mark.slow
def test_packed_points_equal_the_points_trained_alone(tmp_path):
    result = json.loads(run_python(PACKED_VS_ALONE.format(out=str(tmp_path), config=CONFIG), devices=1).splitlines()[-1])
    assert result["statuses"] == ["complete"] * 3 and result["packed_counts"] == [3] * 3 and result["seeds"] == [0, 1, 2]
    assert result["lrs"] == [3e-3, 6e-3, 1.5e-3]
    worst = 0.0
    for i in range(3):
        alone = {r["step"]: r["loss"] for r in result["metrics"][f"alone{i}"]}
        pack = {r["step"]: r["loss"] for r in result["metrics"][f"packed{i}"]}
        assert alone.keys() == pack.keys() and len(alone) >= 4
        # each point logs its own schedule's lr, as when it trains alone
        assert [r["lr"] for r in result["metrics"][f"packed{i}"]] == [r["lr"] for r in result["metrics"][f"alone{i}"]]
        worst = max(worst, max(abs(alone[k] - pack[k]) / abs(alone[k]) for k in alone))
        for ea, ep in zip(result["evals"][f"alone{i}"], result["evals"][f"packed{i}"], strict=True):
            assert ea["step"] == ep["step"]
            for k in (k for k in ea if k.startswith("eval/")):
                assert abs(ea[k] - ep[k]) <= 1e-5 * abs(ea[k]), (k, ea, ep)
    # float32 rounding only: vmap may sum in another order (measured: see BENCHMARKS.md, sweep throughput).
    assert worst < 1e-5, worst
    # The seeds are different points, not one point trained three times.
    assert [r["loss"] for r in result["metrics"]["packed0"]] != [r["loss"] for r in result["metrics"]["packed1"]]


def point_config(seed: int, *extra: str):
    return load_config(CONFIG, [f"--config.seed={seed}", f"--config.name=p{seed}", *extra])


def test_only_same_shape_points_pack():
    a = point_config(0)
    reason = packed.unpackable_reason([a, point_config(1, "--config.model.size=cpu-xs")])
    assert reason is not None and "model.size" in reason
    mix = ("--config.data.mix.text=0.6", "--config.data.mix.image=0.2", "--config.data.mix.audio=0.2")
    assert packed.pack_key(a) == packed.pack_key(point_config(5, *mix))  # seeds and mixtures are data
    # The optimiser's values are data of the train step, with weight decay coupled to the lr or not ...
    values = ("--config.optim.lr=0.01", "--config.optim.b2=0.95", "--config.optim.eps=1e-6",
              "--config.optim.weight_decay=0.3", "--config.optim.warmup=0.3")
    assert packed.pack_key(a) == packed.pack_key(point_config(0, *values))
    decoupled = ("--config.optim.weight_decay_scaling=linear",)
    assert packed.pack_key(point_config(0, *decoupled)) == packed.pack_key(point_config(0, *values, *decoupled))
    # ... but not the update rule's structure: decay on or off, coupled or decoupled.
    reason = packed.unpackable_reason([a, point_config(1, "--config.optim.weight_decay=0")])
    assert reason is not None and "optimiser structure" in reason
    reason = packed.unpackable_reason([a, point_config(1, *decoupled)])
    assert reason is not None and "optim.weight_decay_scaling" in reason
    with pytest.raises(ConfigError, match="cannot train packed"):
        packed.train_packed([a, point_config(1, "--config.model.size=cpu-xs")], ["/nonexistent/a", "/nonexistent/b"])


# Counts how often the packed trainer's train step is traced (its Python body runs once per trace).
TRACES = """
import pathlib, sys
from mdiff.config import load_config
from mdiff.train import packed
made, traces = packed.step_lib.make_train_step, []
def counting(*args, **kwargs):
    step = made(*args, **kwargs)
    def traced(*a):
        traces.append(1)
        return step(*a)
    return traced
packed.step_lib.make_train_step = counting
configs = [load_config({config!r}, [f"--config.seed={{s}}", "--config.train.tokens=1024"])
           for s in (0, 1)]
packed.train_packed(configs, [pathlib.Path({out!r}) / f"p{{s}}" for s in (0, 1)])
print(len(traces))
"""


def test_the_packed_step_is_traced_once(tmp_path):
    """Every step after the first reuses the first step's program: the stacked state keeps one layout in and out."""
    assert run_python(TRACES.format(config=CONFIG, out=str(tmp_path))).split()[-1] == "1"


def seed_sweep():
    from mdiff.sweeps.define import Sweep, sweep

    return Sweep(config=CONFIG, points=sweep("seed", [0, 1]), common={"train.tokens": 8 * 32 * 4}, name="seeds")


def test_runner_packs_same_shape_points_and_each_keeps_its_row(tmp_path):
    import io

    from mdiff.sweeps import state
    from mdiff.sweeps.runner import Progress, run_sweep

    sw = seed_sweep()
    stream = io.StringIO()
    progress = Progress(sw.name, [], tmp_path / "out", stream=stream)
    outcome = run_sweep(sw, tmp_path / "out", parallel=1, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
                        progress=progress)
    assert sorted(outcome.complete) == ["seed-0", "seed-1"], stream.getvalue()
    assert "packing 2 same-shape points into 1 job" in stream.getvalue()
    rows = (tmp_path / "out" / state.RESULTS_FILE).read_text().splitlines()
    assert len(rows) == 3  # header + one row per point
    for name in ("seed-0", "seed-1"):
        run = tmp_path / "out" / "runs" / name
        assert rundir.read_summary(run)["packed"] == 2 and (run / rundir.METRICS_FILE).exists()
        assert not state.log_path(tmp_path / "out", name, ".pid").exists()


def test_runner_deals_a_pack_over_its_parallel_slots():
    from mdiff.sweeps.define import Sweep, sweep
    from mdiff.sweeps.expand import expand
    from mdiff.sweeps.runner import pack_groups

    sw = Sweep(config=CONFIG, points=sweep("seed", [0, 1, 2, 3, 4]), name="seeds")
    other = Sweep(config=CONFIG, points=sweep("model.size", ["cpu-xxs", "cpu-xs"]), name="sizes")
    names = lambda groups: [[r.name for r in g] for g in groups]  # noqa: E731
    # Point i of a same-shape group goes to job i mod parts; a group smaller than `parts` is one point per job.
    assert names(pack_groups(sw, expand(sw), None, parts=2)) == [["seed-0", "seed-2", "seed-4"], ["seed-1", "seed-3"]]
    assert names(pack_groups(sw, expand(sw), None, parts=1)) == [[f"seed-{i}" for i in range(5)]]
    assert names(pack_groups(sw, expand(sw)[:2], None, parts=3)) == [["seed-0"], ["seed-1"]]
    assert names(pack_groups(other, expand(other), None, parts=2)) == [["size-cpu-xxs"], ["size-cpu-xs"]]


def test_emit_puts_packable_points_in_one_job(tmp_path):
    from mdiff.sweeps.emit import SlurmOptions, emit
    from mdiff.sweeps.expand import expand

    sw = seed_sweep()
    runs = expand(sw)
    emit(sw, runs, tmp_path, "slurm", SlurmOptions())
    commands = (tmp_path / "launch" / "commands.txt").read_text().splitlines()
    assert len(commands) == 1 and "mdiff.train.packed" in commands[0]
    spec = json.loads((tmp_path / "launch" / "pack-seed-0.json").read_text())
    assert [e["workdir"] for e in spec] == [str(tmp_path / "runs" / n) for n in ("seed-0", "seed-1")]
    assert "--array=0-0" in (tmp_path / "launch" / "slurm.sh").read_text()


def test_a_non_finite_point_stops_alone():
    """_record: the point whose loss is NaN is summarised as failed (at the step before) and dropped; the
    other point's record goes on (a stand-in for the run bookkeeping records what it is given)."""
    import types

    import numpy as np

    from mdiff.train import loop as loop_lib

    class Book:
        def __init__(self):
            self.records, self.summaries = [], []
            self.progress = types.SimpleNamespace(close=lambda: None)

        def record(self, step, sums):
            loss = float(sums["nelbo_sum"]) / float(sums["count"])
            if not np.isfinite(loss):
                raise loop_lib.NonFiniteLoss(step, loss, float(sums["grad_norm"]))
            self.records.append((step, loss))

        def summary(self, status, step, **extra):
            self.summaries.append(dict(status=status, steps=step, **extra))
            return self.summaries[-1]

    points = [types.SimpleNamespace(active=True, loop=Book(), workdir=pathlib.Path(n)) for n in ("a", "b")]
    summaries: dict = {}
    good = {"nelbo_sum": np.array([2.0, 4.0]), "count": np.array([1.0, 2.0]), "grad_norm": np.array([1.0, 1.0])}
    bad = {"nelbo_sum": np.array([3.0, np.nan]), "count": np.array([1.0, 2.0]), "grad_norm": np.array([1.0, np.nan])}
    packed._record(points, 1, good, summaries)
    packed._record(points, 2, bad, summaries)
    packed._record(points, 3, good, summaries)
    assert points[0].active and not points[1].active
    assert points[0].loop.records == [(1, 2.0), (2, 3.0), (3, 2.0)]
    assert points[1].loop.records == [(1, 2.0)]
    assert summaries == {1: {"status": "failed", "steps": 1, "error": summaries[1]["error"], "failed_step": 2, "packed": 2}}


KILL_AND_RESUME = """
import json, os, pathlib, signal, subprocess, sys, time
out = pathlib.Path({out!r})
def spec(tag):
    entries = [{{"config": {config!r}, "workdir": str(out / tag / f"s{{s}}"),
                "overrides": [f"--config.seed={{s}}", "--config.train.checkpoint_async=False"]}} for s in (0, 1)]
    path = out / f"{{tag}}.json"
    path.write_text(json.dumps(entries))
    return [sys.executable, "-m", "mdiff.train.packed", str(path)]
out.mkdir(parents=True, exist_ok=True)
subprocess.run(spec("whole"), check=True, capture_output=True)
proc = subprocess.Popen(spec("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not all((out / "killed" / f"s{{s}}" / "checkpoints" / "4").exists() for s in (0, 1)):
    time.sleep(0.05)
proc.send_signal(signal.SIGKILL); proc.wait()
subprocess.run(spec("killed"), check=True, capture_output=True)
read = lambda p: [json.loads(l) for l in p.read_text().splitlines()]
print(json.dumps({{t: [[(r["step"], r["loss"]) for r in read(out / t / f"s{{s}}" / "metrics.jsonl")] for s in (0, 1)] for t in ("whole", "killed")}}))
"""


@pytest.mark.slow
def test_packed_job_resumes_exactly_after_sigkill(tmp_path):
    result = json.loads(run_python(KILL_AND_RESUME.format(out=str(tmp_path), config=CONFIG), devices=1, timeout=1500).splitlines()[-1])
    assert result["killed"] == result["whole"] and len(result["whole"][0]) >= 4
