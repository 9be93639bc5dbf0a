"""The train loop: micro-batch invariance, exact resume, preemption, bad input, checkpoints, MFU."""

import json
import logging
import os
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mdiff import rundir
from mdiff.config import ConfigError, load_config
from mdiff.data.pipeline import make_pipeline
from mdiff.optim import sde
from mdiff.train import aot, distributed, loop, mfu, sharding, step as step_lib
from mdiff.train.checkpoint import Checkpointer

QUICK = "experiments/quickstart.py:test"


def _config(*overrides):
    return load_config(QUICK, list(overrides))


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in rundir.read_jsonl(pathlib.Path(workdir) / rundir.METRICS_FILE)]


def _final_params(workdir, config):
    run = loop.setup(config, pathlib.Path(workdir), make_pipeline(config, "train").vocab)
    step, state, _ = Checkpointer(pathlib.Path(workdir) / "checkpoints").restore(run.abstract_state)
    return step, jax.device_get(state["params"])


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Runs of the same config in one process compile once (persistent cache, this module only)."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    before = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of the test config, shared by the resume tests."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = loop.train_and_evaluate(_config(), workdir)
    return workdir, summary


# ---------------------------------------------------------------------------------------------
# Micro-batching does not change the update
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("anti_masking", [False, True])
def test_microbatches_give_the_same_update(tmp_path, anti_masking):
    config = _config(f"diffusion.anti_masking={anti_masking}", "train.batch=16", "train.eval_batch=16", "train.tokens=8192",
                     "diffusion.cond_dropout=0.5")
    pipeline = make_pipeline(config, "train")
    run = loop.setup(config, tmp_path, pipeline.vocab)
    batch = sharding.global_batch(next(pipeline), run.batch_sharding, 16)
    setup = step_lib.loss_setup(config, run.graphdef, run.abstract_params, run.vocab)
    # Plain SGD with lr 1, so the update is minus the gradient: AdamW's first step is lr * sign(g) for every
    # |g| >> eps and turns float rounding of a near-zero gradient into a full-size difference.
    sgd = optax.sgd(1.0)
    results = []
    for micro in (1, 4) if not anti_masking else (1, 2):
        state = loop.init_state(run)
        state = dict(state, opt_state=sgd.init(state["params"]))
        fn = jax.jit(step_lib.make_train_step(setup, lambda hp: sgd, micro))
        new_state, sums = jax.device_get(fn(state, batch, {}))
        start = jax.device_get(state["params"])
        results.append((jax.tree.map(lambda new, old: old - new, new_state["params"], start), sums))
    (g1, s1), (g4, s4) = results
    assert s1["count"] == s4["count"] and s1["count"] > 0
    np.testing.assert_allclose(s1["nelbo_sum"], s4["nelbo_sum"], rtol=1e-5)
    np.testing.assert_allclose(s1["grad_norm"], s4["grad_norm"], rtol=1e-5)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), g1, g4)


def test_seeds_share_one_compiled_initialisation_with_the_same_values():
    """init_state takes the seed as an argument: a second seed adds no entry to the persistent cache (this module's
    fixture turns it on), and each seed's state equals the one the seed-as-a-constant program builds."""
    cache = pathlib.Path(jax.config.jax_compilation_cache_dir)

    def run_for(seed):
        config = _config(f"seed={seed}")
        return loop.setup(config, None, make_pipeline(config, "train").vocab)

    states = {seed: jax.device_get(loop.init_state(run_for(seed))) for seed in (3,)}
    entries = sorted(p.name for p in cache.iterdir())
    states[4] = jax.device_get(loop.init_state(run_for(4)))
    assert sorted(p.name for p in cache.iterdir()) == entries
    for seed, state in states.items():
        run = run_for(seed)
        constant = jax.device_get(jax.jit(lambda: loop.fresh_state(run, seed))())
        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), state, constant))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[3]), jax.tree.leaves(states[4])))


def test_runs_that_differ_in_optimiser_values_share_one_compiled_train_step():
    """The train step takes lr, betas, eps, weight decay, warm-up and horizon as data: a run with other values
    compiles no new program (no new entry in this module's persistent cache)."""
    cache = pathlib.Path(jax.config.jax_compilation_cache_dir)

    def compile_for(*overrides):
        config = _config(*overrides)
        run = loop.setup(config, None, make_pipeline(config, "train").vocab)
        aot.compile_train_step(run)
        return run

    first = compile_for()
    entries = sorted(p.name for p in cache.iterdir())
    other = compile_for("optim.lr=0.02", "optim.b2=0.9", "optim.eps=1e-5", "optim.weight_decay=0.2",
                        "optim.warmup=0.5", "train.tokens=16384")
    assert other.plan.steps != first.plan.steps and other.plan.warmup_steps != first.plan.warmup_steps
    assert sorted(p.name for p in cache.iterdir()) == entries


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors before any work
# ---------------------------------------------------------------------------------------------
def test_batch_not_divisible_by_data_parallel_times_micro():
    config = _config("train.batch=12", "train.microbatches=3")
    with pytest.raises(ConfigError, match=r"train.batch=12: must be divisible by data-parallel size 8 x .*=3 = 24; e.g. train.batch=24"):
        loop.check_batch_layout(config, 8)
    config = _config("train.eval_batch=12")
    with pytest.raises(ConfigError, match=r"train.eval_batch=12: must be divisible by data-parallel size 8; e.g. train.eval_batch=8"):
        loop.check_batch_layout(config, 8)


def test_mesh_that_does_not_match_devices(tmp_path):
    config = _config("mesh.shape.data=3")
    with pytest.raises(ConfigError, match=r"mesh.shape=.*needs 3 devices, have 8"):
        loop.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / rundir.CONFIG_FILE).exists()


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_seed_outside_the_int32_range_is_refused(seed):
    with pytest.raises(ConfigError, match=r"seed=.*must be in \[0, 2\*\*31\)"):
        _config(f"seed={seed}")


def test_horizon_shorter_than_one_step():
    config = _config()
    with config.unlocked():
        config.train.tokens = 100  # past validation, as a sweep might set it
    with pytest.raises(ConfigError, match="shorter than one step"):
        sde.plan(config)


def test_resume_with_another_model_shape_is_refused(reference_run, tmp_path):
    workdir, _ = reference_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(workdir, copy)
    config = _config("model.size=cpu-xs")
    with pytest.raises(ConfigError, match=r"config.model: the checkpoint .* another shape"):
        loop.train_and_evaluate(config, copy)


# ---------------------------------------------------------------------------------------------
# The run directory and exact resume
# ---------------------------------------------------------------------------------------------
def test_run_directory_contract(reference_run):
    workdir, summary = reference_run
    assert summary["status"] == "complete" and summary["steps"] == 12
    on_disk = json.loads((workdir / rundir.SUMMARY_FILE).read_text())
    for key in ("params", "params_total", "params_embedding", "tokens", "flops", "steps", "batch_physical",
                "batch_logical", "wall_s", "eval/loss", "eval/bits"):
        assert key in on_disk, key
    assert on_disk["tokens"] == 12 * 8 * 32
    records = rundir.read_jsonl(workdir / rundir.METRICS_FILE)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    for key in ("step", "tokens", "flops", "wall_s", "loss", "loss/text", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert key in records[-1], key
    evals = rundir.read_jsonl(workdir / rundir.EVAL_FILE)
    assert [e["step"] for e in evals] == [6, 12] and "eval/bits" in evals[-1]
    assert json.loads((workdir / rundir.CONFIG_FILE).read_text())["name"] == "quickstart-test"


def test_sigterm_preempts_and_resume_is_exact(reference_run, tmp_path):
    ref_dir, ref_summary = reference_run
    workdir = tmp_path / "run"
    config = _config()

    def send_sigterm_after_step_five():
        path = workdir / rundir.METRICS_FILE
        deadline = time.time() + 300
        while time.time() < deadline:
            if path.exists() and any(r["step"] >= 5 for r in rundir.read_jsonl(path)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    threading.Thread(target=send_sigterm_after_step_five, daemon=True).start()
    first = loop.train_and_evaluate(config, workdir)
    assert first["status"] == "preempted" and 5 <= first["steps"] < 12
    assert json.loads((workdir / rundir.SUMMARY_FILE).read_text())["status"] == "preempted"
    second = loop.train_and_evaluate(config, workdir)
    assert second["status"] == "complete" and second["steps"] == 12
    # Same losses at every logged step of the reference, same final evaluation, same parameters.
    assert _losses(workdir) == _losses(ref_dir)
    assert second["eval/loss"] == ref_summary["eval/loss"]
    _, ref_params = _final_params(ref_dir, _config())
    _, params = _final_params(workdir, config)
    jax.tree.map(np.testing.assert_array_equal, ref_params, params)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = _config("optim.lr=1e30", "optim.clip=0.0", "optim.warmup=0.0", "optim.reparameterise=False",
                     "train.checkpoint_every=1", "train.log_every=1")
    summary = loop.train_and_evaluate(config, tmp_path)
    assert summary["status"] == "failed" and "non-finite loss at step" in summary["error"]
    bad = summary["failed_step"]
    steps = Checkpointer(tmp_path / "checkpoints").steps()
    assert steps and max(steps) < bad


# ---------------------------------------------------------------------------------------------
# Checkpointer
# ---------------------------------------------------------------------------------------------
def _mesh(shape):
    return jax.make_mesh(shape, ("a", "b"), axis_types=(AxisType.Auto,) * 2)


def test_restore_onto_another_mesh(tmp_path):
    mesh1, mesh2 = _mesh((8, 1)), _mesh((2, 4))
    x = jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(mesh1, P("a", None)))
    ck = Checkpointer(tmp_path, keep=2)
    ck.save(3, {"w": x, "step": jnp.int32(3)}, {"data": {"k": 1}})
    ck.wait()
    target = {
        "w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh2, P("b", "a"))),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh2, P())),
    }
    step, state, meta = ck.restore(target)
    assert step == 3 and meta["data"] == {"k": 1}
    assert state["w"].sharding.spec == P("b", "a")
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(64.0).reshape(8, 8))
    ck.close()


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    ck = Checkpointer(tmp_path, keep=3)
    for s in (1, 2):
        ck.save(s, {"w": jnp.full((4,), float(s))}, {"data": {"s": s}})
    ck.wait()
    for root, _, files in os.walk(tmp_path / "2"):
        for name in files:
            path = pathlib.Path(root) / name
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        step, state, meta = ck.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert step == 1 and meta["data"] == {"s": 1} and float(state["w"][0]) == 1.0
    assert "unreadable" in caplog.text and (tmp_path / "2.corrupt").exists()
    assert ck.save(2, {"w": jnp.zeros(4)}, {"data": {}})  # the step can be written again
    ck.close()


def test_keeps_the_last_k(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    for s in (1, 2, 3, 4):
        ck.save(s, {"w": jnp.zeros(2)}, {})
    ck.wait()
    assert ck.steps() == [3, 4]
    ck.close()


# ---------------------------------------------------------------------------------------------
# MFU table and distributed detection
# ---------------------------------------------------------------------------------------------
class _FakeDevice:
    platform = "gpu"

    def __init__(self, kind):
        self.device_kind = kind


@pytest.mark.parametrize(
    "kind, peak",
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
     ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("Unknown X", None)],
)
def test_peak_table(kind, peak):
    assert mfu.peak_flops_per_device(_FakeDevice(kind), "bfloat16") == peak


def test_cpu_peak_and_mfu():
    peak = mfu.peak_flops_per_device(jax.devices()[0])
    assert peak == mfu.CPU_FLOPS_PER_CORE * os.cpu_count() / jax.local_device_count()
    assert mfu.mfu(0.5 * 8 * peak, 8, peak) == pytest.approx(0.5)
    assert mfu.mfu(1.0, 8, None) is None


def test_distributed_detection():
    assert distributed.detect({}) is None
    c = distributed.detect({"MDIFF_COORDINATOR": "127.0.0.1:1234", "MDIFF_NUM_PROCESSES": "2", "MDIFF_PROCESS_ID": "1"})
    assert (c.coordinator, c.num_processes, c.process_id, c.auto) == ("127.0.0.1:1234", 2, 1, False)
    assert distributed.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).auto
    assert distributed.detect({"TPU_WORKER_HOSTNAMES": "a,b"}).auto
    with pytest.raises(ConfigError, match="MDIFF_NUM_PROCESSES"):
        distributed.detect({"MDIFF_COORDINATOR": "h:1"})


# ---------------------------------------------------------------------------------------------
# Subprocesses: SIGKILL at an arbitrary step, and 2 processes x 4 devices
# ---------------------------------------------------------------------------------------------
TRAIN_SCRIPT = """
import sys
from absl import flags
flags.FLAGS.mark_as_parsed()
from mdiff.config import load_config
from mdiff.train.loop import train_and_evaluate
train_and_evaluate(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2])
"""


def _train_process(workdir, *overrides, devices=8, env=None):
    import subprocess
    import sys

    full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", MDIFF_PROGRESS="0")
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, QUICK, str(workdir), *overrides],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_is_bitwise(tmp_path):
    overrides = ("train.tokens=10240", "train.log_every=1", "train.checkpoint_every=7", "train.eval_every=0")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(_train_process(reference, *overrides))
    proc = _train_process(killed, *overrides)
    metrics = killed / rundir.METRICS_FILE
    while proc.poll() is None:
        if metrics.exists() and any(r["step"] >= 17 for r in rundir.read_jsonl(metrics)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    _finish(_train_process(killed, *overrides))
    assert _losses(killed) == _losses(reference)
    config = _config(*overrides)
    (s1, p1), (s2, p2) = _final_params(reference, config), _final_params(killed, config)
    assert s1 == s2 == 40
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_of_four_devices_match_one_of_eight(tmp_path, reference_run):
    from helpers import free_port

    ref_dir, ref_summary = reference_run
    port = free_port()
    procs = [
        _train_process(
            tmp_path,
            devices=4,
            env={
                "MDIFF_COORDINATOR": f"127.0.0.1:{port}",
                "MDIFF_NUM_PROCESSES": "2",
                "MDIFF_PROCESS_ID": str(i),
                "MDIFF_LOCAL_DEVICES": "4",
                "XLA_FLAGS": "",
            },
        )
        for i in range(2)
    ]
    for proc in procs:
        _finish(proc)
    ours, ref = _losses(tmp_path), _losses(ref_dir)
    assert [s for s, _ in ours] == [s for s, _ in ref]
    np.testing.assert_allclose([l for _, l in ours], [l for _, l in ref], rtol=2e-5)
    summary = json.loads((tmp_path / rundir.SUMMARY_FILE).read_text())
    assert summary["eval/loss"] == pytest.approx(ref_summary["eval/loss"], rel=2e-5)


def test_progress_bar_respects_env_and_config(monkeypatch):
    import io

    from mdiff.train.progress import Progress

    stream = io.StringIO()
    monkeypatch.setenv("MDIFF_PROGRESS", "1")
    Progress(10, enabled=True, stream=stream).update(3, 1.5)
    assert "3/10" in stream.getvalue()
    for env, flag in (("0", True), ("1", False)):
        monkeypatch.setenv("MDIFF_PROGRESS", env)
        quiet = io.StringIO()
        Progress(10, enabled=flag, stream=quiet).update(3, 1.5)
        assert quiet.getvalue() == ""
